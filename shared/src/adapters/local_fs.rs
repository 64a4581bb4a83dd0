//! `ObjectStore` on a local folder (`file:///path`).
//!
//! Writes go to a temp file under `<root>/.tmp/<owner>/` and are renamed into place on
//! `finish`, so a reader never sees half a file and two writers of the same key leave one
//! whole file.
//!
//! A temp file holds patient data until it is published, so none may outlive a process that
//! dies mid-write. Each store writes into a temp folder of its own, `<owner>`, next to a lock
//! file `<owner>.lock` it holds locked (`flock`) for as long as it lives; the lock goes with
//! the process however it ends. [`ObjectStore::clean_abandoned`] removes the temp folders
//! whose lock nobody holds: what dead processes left.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::io::{Read, Seek};

use crate::buffers::Buffer;
use crate::ports::{
    ByteStream, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, Refusal, validate_key,
};

const TMP_DIR: &str = ".tmp";
const LOCK_SUFFIX: &str = ".lock";
const READ_BUFFER: usize = crate::buffers::BUFFER_BYTES;
/// Loose files directly in `.tmp/` (the layout before owner folders) untouched this long are
/// taken for abandoned.
const LOOSE_TEMP_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct LocalFsStore {
    root: PathBuf,
    /// This store's temp folder, made at its first write (a store only read from, a source,
    /// never makes one).
    temp: Arc<Mutex<Option<Arc<TempOwner>>>>,
}

/// A temp folder and the lock that says its owner is alive.
#[derive(Debug)]
struct TempOwner {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: std::fs::File,
}

impl TempOwner {
    fn create(root: &Path) -> std::io::Result<TempOwner> {
        let temp = root.join(TMP_DIR);
        std::fs::create_dir_all(&temp)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The lock first: a temp folder without a held lock is fair game for the cleaner.
        let lock_path = temp.join(format!("{id}{LOCK_SUFFIX}"));
        let lock = std::fs::File::create(&lock_path)?;
        lock.try_lock().map_err(std::io::Error::other)?;
        let dir = temp.join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok(TempOwner {
            dir,
            lock_path,
            _lock: lock,
        })
    }
}

impl Drop for TempOwner {
    fn drop(&mut self) {
        // The folder before the lock file: a folder without its lock file is abandoned.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
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
        Ok(LocalFsStore {
            root,
            temp: Arc::new(Mutex::new(None)),
        })
    }

    /// This store's temp folder, made when first asked for.
    fn temp_owner(&self) -> Result<Arc<TempOwner>, ObjectError> {
        let mut temp = self
            .temp
            .lock()
            .map_err(|_| ObjectError::backend(TMP_DIR, "temp folder lock poisoned"))?;
        if let Some(owner) = temp.as_ref() {
            return Ok(owner.clone());
        }
        let owner = Arc::new(TempOwner::create(&self.root).map_err(|e| map_io(TMP_DIR, e))?);
        *temp = Some(owner.clone());
        Ok(owner)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// The port's variant for an I/O error: `NotFound`, `Refused` for what no retry can mend
/// (permissions, a read-only file system, a full disk or quota), `Backend` for the rest.
fn map_io(key: &str, e: std::io::Error) -> ObjectError {
    let refusal = match e.kind() {
        ErrorKind::NotFound => return ObjectError::NotFound(key.to_owned()),
        ErrorKind::PermissionDenied => Refusal::PermissionDenied,
        ErrorKind::ReadOnlyFilesystem => Refusal::ReadOnly,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Refusal::StorageFull,
        _ => return ObjectError::backend(key, e),
    };
    ObjectError::Refused {
        key: key.to_owned(),
        reason: refusal,
        source: Box::new(e),
    }
}

/// Removes the temp folders under `root` whose owners are gone (their lock is free), and
/// loose temp files left by older versions; returns how many files went.
fn clean_abandoned(root: &Path) -> std::io::Result<u64> {
    let temp = root.join(TMP_DIR);
    let entries = match std::fs::read_dir(&temp) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0u64;
    let mut folders: Vec<PathBuf> = Vec::new();
    let mut locks: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            folders.push(path);
        } else if path.to_string_lossy().ends_with(LOCK_SUFFIX) {
            locks.push(path);
        } else if entry
            .metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age >= LOOSE_TEMP_AGE)
        {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    for folder in folders {
        let lock_path = PathBuf::from(format!("{}{LOCK_SUFFIX}", folder.to_string_lossy()));
        // Held by a live store: leave it. No lock file at all: its owner is gone.
        let lock = match std::fs::File::open(&lock_path) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        walk(&folder, &folder, &mut files)?;
        removed += files.len() as u64;
        std::fs::remove_dir_all(&folder)?;
        if lock.is_some() {
            let _ = std::fs::remove_file(&lock_path);
        }
    }
    // Lock files whose folder is gone and whose owner is too.
    for lock_path in locks {
        if lock_path.with_extension("").exists() {
            continue;
        }
        if let Ok(f) = std::fs::File::open(&lock_path)
            && f.try_lock().is_ok()
        {
            let _ = std::fs::remove_file(&lock_path);
        }
    }
    Ok(removed)
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
        let owner = self.temp_owner()?;
        let tmp = owner.dir.join(uuid::Uuid::new_v4().simple().to_string());
        // The file is created by the first write that reaches the disk (or by `finish`):
        // a small object is created, written, synced and renamed in one trip to the
        // blocking pool.
        Ok(Box::new(LocalWriter {
            key: key.to_owned(),
            target,
            tmp,
            _owner: owner,
            file: None,
            closed: false,
            abandoned: Arc::new(AtomicBool::new(false)),
            size: 0,
            pending: Vec::new(),
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
        let mut state = ReadState {
            ready: None,
            next: None,
            left: end.map(|e| e.saturating_sub(start)),
            key: key.to_owned(),
        };
        // Opened and read from in one trip to the blocking pool (a missing object is still
        // reported here, not by the stream).
        let want = state.want();
        let buf = crate::buffers::pool().take();
        let first = tokio::task::spawn_blocking(move || -> std::io::Result<ReadDone> {
            let mut f = std::fs::File::open(&path)?;
            if start > 0 {
                f.seek(std::io::SeekFrom::Start(start))?;
            }
            Ok(read_into(f, buf, want))
        })
        .await
        .map_err(|e| ObjectError::backend(key, e))?
        .map_err(|e| map_io(key, e))?;
        state.ready = Some(first);
        // Each read runs on the blocking pool straight into a pooled buffer: one copy from
        // the page cache, no page faults, and no allocation on blocking threads (each of
        // which would get a malloc arena of its own and keep its memory). The next read is
        // started as soon as one is handed out, so the disk and the kernel's copy overlap
        // the caller's work on the previous buffer.
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let (file, buf, want, read) = match st.ready.take() {
                    Some(done) => done,
                    None => match st.next.take()?.await {
                        Ok(done) => done,
                        Err(_) => {
                            let e = ObjectError::backend(
                                &st.key,
                                "a read on the blocking pool was lost",
                            );
                            return Some((Err(e), st));
                        }
                    },
                };
                match read {
                    Ok(0) => None,
                    Ok(n) => {
                        if let Some(l) = st.left.as_mut() {
                            *l -= n as u64;
                        }
                        // A short read is the end of the file.
                        if n == want {
                            st.read_ahead(file);
                        }
                        Some((Ok(buf.freeze()), st))
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
            Err(e) => Err(map_io(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        validate_key(prefix)?;
        let root = self.root.clone();
        let prefix_owned = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = objects_under(&root, &prefix_owned)?;
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
            Err(e) => Err(map_io(key, e)),
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

    async fn clean_abandoned(&self) -> Result<u64, ObjectError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || clean_abandoned(&root))
            .await
            .map_err(|e| ObjectError::backend(TMP_DIR, e))?
            .map_err(|e| map_io(TMP_DIR, e))
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
/// renames go into a folder that exists). A `delete_prefix` may remove the folder again
/// between its creation and the rename, when it found it empty: then it is made again.
fn rename_into(src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::rename(src, dst) {
            Err(e) if e.kind() == ErrorKind::NotFound && src.exists() && tries < 8 => {
                tries += 1;
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            other => return other,
        }
    }
}

/// Every object whose key starts with `prefix` (unsorted), walking only the folder the
/// prefix's last `/` names.
fn objects_under(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
    let dir = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    walk(root, &dir, &mut out).map_err(|e| map_io(prefix, e))?;
    out.retain(|m| m.key.starts_with(prefix));
    Ok(out)
}

/// Deletes every object under `prefix`. Folders are an artefact of this adapter, not
/// objects: a folder prefix (ending in `/`) that is left empty goes too, and so does every
/// folder the deleted objects leave empty, up to the root.
fn delete_prefix(root: &Path, prefix: &str) -> Result<u64, ObjectError> {
    let objects = objects_under(root, prefix)?;
    let mut folders: Vec<PathBuf> = Vec::new();
    for o in &objects {
        let path = root.join(&o.key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(map_io(&o.key, e)),
        }
        if let Some(parent) = path.parent()
            && folders.last().is_none_or(|f| f != parent)
        {
            folders.push(parent.to_path_buf());
        }
    }
    if let Some(folder) = prefix.strip_suffix('/').filter(|d| !d.is_empty()) {
        if objects_under(root, prefix)?.is_empty() {
            match std::fs::remove_dir_all(root.join(folder)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_io(prefix, e)),
            }
        }
        if let Some(parent) = root.join(folder).parent() {
            folders.push(parent.to_path_buf());
        }
    } else if let Some(i) = prefix.rfind('/') {
        folders.push(root.join(&prefix[..i]));
    }
    remove_empty_folders(root, folders);
    Ok(objects.len() as u64)
}

/// Removes each of `folders` and then its parents, up to (not including) `root`, for as long
/// as they are empty. A folder that is not empty, or that a writer has just made again, is
/// left alone: this is tidying, never an error.
fn remove_empty_folders(root: &Path, mut folders: Vec<PathBuf>) {
    // Deepest first, so that a parent is tried after its children.
    folders.sort_by_key(|f| std::cmp::Reverse(f.components().count()));
    folders.dedup();
    for folder in folders {
        let mut cur = folder.as_path();
        while cur != root && cur.starts_with(root) {
            if std::fs::remove_dir(cur).is_err() {
                break;
            }
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
    }
}

/// What a read on the blocking pool gives back: the file, the buffer, how much was asked.
type ReadDone = (std::fs::File, Buffer, usize, std::io::Result<usize>);

struct ReadState {
    /// A read already done (the first, made with the open).
    ready: Option<ReadDone>,
    /// The read in flight; `None` (with nothing ready) once the stream ended or failed.
    next: Option<tokio::sync::oneshot::Receiver<ReadDone>>,
    /// Bytes left to read when a range was asked for.
    left: Option<u64>,
    key: String,
}

impl ReadState {
    /// How much the next read asks for: a buffer, or what is left of the range.
    fn want(&self) -> usize {
        self.left
            .map_or(READ_BUFFER, |l| l.min(READ_BUFFER as u64) as usize)
    }

    /// Starts reading the next buffer from `file`, unless the range is exhausted.
    fn read_ahead(&mut self, file: std::fs::File) {
        let want = self.want();
        if want > 0 {
            let buf = crate::buffers::pool().take();
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Whatever becomes of the reader meanwhile (a range read to its end, a stopped
            // chunk), the buffer goes back to the pool when dropped.
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(read_into(file, buf, want));
            });
            self.next = Some(rx);
        }
    }
}

/// Reads up to `want` bytes of `file` into `buf` (a pooled buffer, taken on the async side:
/// one allocated on a blocking thread would start a malloc arena of its own there, which
/// keeps its memory). `read_to_end` within the capacity fills the buffer without zeroing it
/// first and never reallocates.
fn read_into(mut file: std::fs::File, mut buf: Buffer, want: usize) -> ReadDone {
    let r = (&mut file).take(want as u64).read_to_end(&mut buf);
    (file, buf, want, r)
}

struct LocalWriter {
    key: String,
    target: PathBuf,
    /// The temp file the object is written to, created when first needed.
    tmp: PathBuf,
    /// Keeps the temp folder (and its lock) for as long as the writer lives.
    _owner: Arc<TempOwner>,
    /// A std file written on the blocking pool (`&File` is `Write`), so that data is handed
    /// over without the copy `tokio::fs::File` makes into its own buffer; `None` until the
    /// first write to it is done.
    file: Option<Arc<std::fs::File>>,
    closed: bool,
    /// Set when the writer is dropped unfinished, for a write in flight that creates the
    /// temp file after `Drop` looked for it.
    abandoned: Arc<AtomicBool>,
    /// Bytes taken, including `pending`.
    size: u64,
    /// Data handed over but not yet written: the first buffer (written with the second, or
    /// by `finish`) and small pieces, gathered until they are worth a trip to the blocking
    /// pool.
    pending: Vec<Bytes>,
    /// The write in flight, if any (see [`LocalWriter::write`]).
    writing: Option<tokio::task::JoinHandle<std::io::Result<Arc<std::fs::File>>>>,
    /// Bytes written when the last early flush started.
    flushed_to: u64,
    /// An early flush in flight (see [`EARLY_FLUSH_MIN`]).
    flushing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Pieces smaller than this together wait for more before they are written.
const SMALL_WRITE: usize = 64 * 1024;

/// A file starts going to disk while it is still being written, one flush in flight at a
/// time, so that the `fdatasync` that makes it durable at the end (at the end of a chunk, on
/// an export's critical path) waits only for the last part. The step between flushes
/// doubles from 1 MiB up to 8 MiB: a mid-size file leaves little for the end, and a big
/// one is not flushed so often that the disk spends its time on cache flushes.
const EARLY_FLUSH_MIN: u64 = 1024 * 1024;
const EARLY_FLUSH_MAX: u64 = 8 * 1024 * 1024;

fn early_flush_step(flushed: u64) -> u64 {
    flushed.clamp(EARLY_FLUSH_MIN, EARLY_FLUSH_MAX)
}

/// Waits for a background flush and reports its error.
async fn settle(
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    key: &str,
) -> Result<(), ObjectError> {
    if let Some(task) = task {
        task.await
            .map_err(|e| ObjectError::backend(key, e))?
            .map_err(|e| map_io(key, e))?;
    }
    Ok(())
}

/// Appends `data` to `file`, creating it at `tmp` first when there is none yet. A file
/// created for a writer that was dropped meanwhile is removed again (the writer's `Drop`
/// may have looked for it before it existed).
fn append(
    file: Option<Arc<std::fs::File>>,
    tmp: &Path,
    data: &[u8],
    abandoned: &AtomicBool,
) -> std::io::Result<Arc<std::fs::File>> {
    let file = match file {
        Some(f) => f,
        None => {
            let f = Arc::new(create_file(tmp)?);
            if abandoned.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(tmp);
            }
            f
        }
    };
    std::io::Write::write_all(&mut &*file, data)?;
    Ok(file)
}

/// [`append`] for each of `parts` in order (the file is created even when there are none).
fn append_all(
    mut file: Option<Arc<std::fs::File>>,
    tmp: &Path,
    parts: &[Bytes],
    abandoned: &AtomicBool,
) -> std::io::Result<Arc<std::fs::File>> {
    let Some((last, before)) = parts.split_last() else {
        return append(file, tmp, &[], abandoned);
    };
    for part in before {
        file = Some(append(file, tmp, part, abandoned)?);
    }
    append(file, tmp, last, abandoned)
}

impl LocalWriter {
    fn check_open(&self) -> Result<(), ObjectError> {
        if self.closed {
            return Err(ObjectError::backend(&self.key, "writer already closed"));
        }
        Ok(())
    }

    /// Waits for the write in flight, if any, and keeps the file it wrote to.
    async fn settle_write(&mut self) -> Result<(), ObjectError> {
        if let Some(task) = self.writing.take() {
            let file = task
                .await
                .map_err(|e| ObjectError::backend(&self.key, e))?
                .map_err(|e| map_io(&self.key, e))?;
            self.file = Some(file);
        }
        Ok(())
    }

    /// Starts an early flush when enough reached the file since the last and none is in
    /// flight. A finished flush's error fails the file: Linux reports a write-back error to
    /// only one `fsync` of the open file, so the final sync would not see it.
    async fn flush_early(&mut self, written: u64) -> Result<(), ObjectError> {
        if written - self.flushed_to < early_flush_step(self.flushed_to)
            || self.flushing.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        settle(self.flushing.take(), &self.key).await?;
        self.flushed_to = written;
        self.flushing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        Ok(())
    }

    /// Waits for everything in flight.
    async fn settle_all(&mut self) -> Result<(), ObjectError> {
        let writing = self.settle_write().await;
        let flushing = settle(self.flushing.take(), &self.key).await;
        writing.and(flushing)
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    /// Starts writing `data` once the write before it is done, and returns: the caller fills
    /// its next buffer while the kernel copies this one (one write in flight; its error is
    /// reported by the next call, or by `finish`). The first buffer waits for the second
    /// instead: if it is the only one, `finish` creates, writes, syncs and renames the file
    /// in one trip to the blocking pool. Small pieces wait too, until together they are worth
    /// a trip.
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        self.check_open()?;
        let first = self.file.is_none() && self.writing.is_none() && self.pending.is_empty();
        self.size += data.len() as u64;
        self.pending.push(data);
        let held: usize = self.pending.iter().map(Bytes::len).sum();
        if first || held < SMALL_WRITE {
            return Ok(());
        }
        self.settle_write().await?;
        let parts = std::mem::take(&mut self.pending);
        // What the file holds now: everything taken but what is about to be written.
        let on_file = self.size - held as u64;
        let file = self.file.clone();
        let tmp = self.tmp.clone();
        let abandoned = self.abandoned.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            append_all(file, &tmp, &parts, &abandoned)
        }));
        self.flush_early(on_file).await
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        self.check_open()?;
        self.closed = true;
        let tmp = self.tmp.clone();
        if let Err(e) = self.settle_all().await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let file = self.file.take();
        let last = std::mem::take(&mut self.pending);
        let target = self.target.clone();
        let abandoned = self.abandoned.clone();
        // What is left written, made durable and moved into place in one trip to the
        // blocking pool.
        tokio::task::spawn_blocking(move || {
            let done = append_all(file, &tmp, &last, &abandoned)
                .and_then(|f| f.sync_data())
                .and_then(|()| rename_into(&tmp, &target));
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done
        })
        .await
        .map_err(|e| ObjectError::backend(&self.key, e))?
        .map_err(|e| map_io(&self.key, e))?;
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        // Whatever is in flight finishes into the temp file, which goes either way.
        let _ = self.settle_all().await;
        self.closed = true;
        self.file = None;
        self.pending.clear();
        match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ObjectError::backend(&self.key, e)),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // A writer dropped without finish (a cancelled or crashed task) must not leave its
        // temp file behind; a write in flight that creates it after this removes it itself.
        if !self.closed {
            self.abandoned.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&self.tmp);
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
        while (expected.len() as u64) < 3 * EARLY_FLUSH_MAX {
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

    #[test]
    fn io_errors_no_retry_mends_are_refusals_said_in_words() {
        // A real "no space left on device": what /dev/full answers every write with.
        if let Ok(mut full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
            let e = std::io::Write::write_all(&mut full, b"x").expect_err("/dev/full");
            let mapped = map_io("k", e);
            assert!(
                matches!(
                    mapped,
                    ObjectError::Refused {
                        reason: Refusal::StorageFull,
                        ..
                    }
                ),
                "{mapped:?}"
            );
            assert!(mapped.to_string().contains("no space left"), "{mapped}");
            assert!(!mapped.is_transient());
        }
        for (errno, reason) in [
            (libc_errno::EROFS, Refusal::ReadOnly),
            (libc_errno::EACCES, Refusal::PermissionDenied),
            (libc_errno::EDQUOT, Refusal::StorageFull),
        ] {
            let mapped = map_io("k", std::io::Error::from_raw_os_error(errno));
            assert!(
                matches!(&mapped, ObjectError::Refused { reason: r, .. } if *r == reason),
                "{errno}: {mapped:?}"
            );
        }
        assert!(map_io("k", std::io::Error::other("glitch")).is_transient());
        assert!(matches!(
            map_io("k", std::io::ErrorKind::NotFound.into()),
            ObjectError::NotFound(_)
        ));
    }

    /// Linux's numbers for the errors above (no libc dependency for three constants).
    mod libc_errno {
        pub const EACCES: i32 = 13;
        pub const EROFS: i32 = 30;
        pub const EDQUOT: i32 = 122;
    }

    #[tokio::test]
    async fn deleting_a_prefix_leaves_no_empty_folder_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        store
            .put(
                "job/.staging/000001.a.Patient-1.ndjson",
                Bytes::from_static(b"x\n"),
            )
            .await
            .expect("put");
        store
            .put(
                "job/.staging/000002.b.Patient-1.ndjson",
                Bytes::from_static(b"y\n"),
            )
            .await
            .expect("put");
        // A name prefix: the folder still holds the other attempt's file, so it stays.
        assert_eq!(
            store
                .delete_prefix("job/.staging/000001.a.")
                .await
                .expect("delete"),
            1
        );
        assert!(dir.path().join("job/.staging").is_dir());
        // The last file goes, and with it every folder up to the root.
        assert_eq!(
            store
                .delete_prefix("job/.staging/000002.b.")
                .await
                .expect("delete"),
            1
        );
        assert!(
            !dir.path().join("job").exists(),
            "empty folders left behind"
        );
        assert!(dir.path().exists(), "the root stays");
        // A folder prefix goes as a whole, nested empty folders included.
        store
            .put(
                "c/job/error/OperationOutcome-1.ndjson",
                Bytes::from_static(b"{}\n"),
            )
            .await
            .expect("put");
        std::fs::create_dir_all(dir.path().join("c/job/.staging/empty")).expect("mkdir");
        assert_eq!(store.delete_prefix("c/job/").await.expect("delete"), 1);
        assert!(!dir.path().join("c").exists(), "empty folders left behind");
    }

    /// Temp files left in the temp folder (which may not exist), the owners' lock files
    /// aside.
    fn temp_files(root: &Path) -> Vec<String> {
        let temp = root.join(TMP_DIR);
        let mut files = Vec::new();
        walk(&temp, &temp, &mut files).expect("temp folder readable");
        files
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !k.ends_with(LOCK_SUFFIX))
            .collect()
    }

    #[tokio::test]
    async fn temp_files_of_a_dead_owner_are_removed_and_a_live_owners_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let live = LocalFsStore::new(dir.path()).expect("store");
        let mut w = live.writer("a.ndjson").await.expect("writer");
        w.write(Bytes::from(vec![b'a'; 300 * 1024]))
            .await
            .expect("write");
        w.write(Bytes::from(vec![b'b'; 300 * 1024]))
            .await
            .expect("write");
        // A process that died mid-write: its temp folder and file, its lock file unheld.
        let dead = dir.path().join(TMP_DIR).join("0123456789abcdef");
        std::fs::create_dir_all(&dead).expect("mkdir");
        std::fs::write(dead.join("partial"), b"{\"resourceType\":\"Patient\"}").expect("write");
        std::fs::write(
            dir.path()
                .join(TMP_DIR)
                .join(format!("0123456789abcdef{LOCK_SUFFIX}")),
            b"",
        )
        .expect("lock file");
        // A folder whose lock file is gone altogether.
        let orphan = dir.path().join(TMP_DIR).join("fedcba9876543210");
        std::fs::create_dir_all(&orphan).expect("mkdir");
        std::fs::write(orphan.join("partial"), b"x").expect("write");
        // Another store on the same folder (another process, as far as locks go) cleans up.
        let other = LocalFsStore::new(dir.path()).expect("store");
        assert_eq!(other.clean_abandoned().await.expect("clean"), 2);
        assert!(!dead.exists() && !orphan.exists());
        assert!(
            !dir.path()
                .join(TMP_DIR)
                .join(format!("0123456789abcdef{LOCK_SUFFIX}"))
                .exists()
        );
        // The live writer's file is untouched and still publishes.
        assert_eq!(temp_files(dir.path()).len(), 1);
        w.finish().await.expect("finish");
        assert_eq!(
            std::fs::metadata(dir.path().join("a.ndjson"))
                .expect("published")
                .len(),
            600 * 1024
        );
        assert_eq!(other.clean_abandoned().await.expect("clean"), 0);
        // When the last store and writer of an owner go, so does its temp folder.
        drop(live);
        let left: Vec<_> = std::fs::read_dir(dir.path().join(TMP_DIR))
            .expect("temp")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn dropped_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        let mut w = store.writer("x/y.ndjson").await.expect("writer");
        w.write(Bytes::from_static(b"abc")).await.expect("write");
        drop(w);
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writer_dropped_with_a_write_in_flight_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        for _ in 0..20 {
            let mut w = store.writer("x/y.ndjson").await.expect("writer");
            // The second write starts the first on the blocking pool, which creates the
            // file; the writer is dropped before that write is done.
            w.write(Bytes::from(vec![b'a'; 256 * 1024]))
                .await
                .expect("write");
            w.write(Bytes::from_static(b"b")).await.expect("write");
            drop(w);
        }
        // Let the writes in flight end.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let left = temp_files(dir.path());
        assert!(left.is_empty(), "temp files left: {left:?}");
        assert!(!dir.path().join("x/y.ndjson").exists());
    }

    #[tokio::test]
    async fn a_small_object_is_whole_and_an_empty_one_exists() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        let mut w = store.writer("a/one.ndjson").await.expect("writer");
        w.write(Bytes::from_static(b"{}\n")).await.expect("write");
        assert_eq!(w.finish().await.expect("finish"), 3);
        assert_eq!(
            std::fs::read(dir.path().join("a/one.ndjson")).expect("read"),
            b"{}\n"
        );
        let w = store.writer("a/empty.ndjson").await.expect("writer");
        assert_eq!(w.finish().await.expect("finish"), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join("a/empty.ndjson"))
                .expect("empty object exists")
                .len(),
            0
        );
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn small_pieces_gathered_between_big_ones_keep_their_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        let mut w = store.writer("mixed/file.ndjson").await.expect("writer");
        let mut expected = Vec::new();
        let mut k = 0u8;
        // Small pieces (gathered), big ones (each starts a write with what was gathered),
        // and small ones left over for `finish`.
        for size in [
            10,
            3,
            70_000,
            5,
            1,
            200_000,
            64 * 1024 - 1,
            1,
            7,
            100_000,
            9,
            2,
        ] {
            let data: Vec<u8> = (0..size).map(|i| k.wrapping_add(i as u8)).collect();
            k = k.wrapping_add(1);
            expected.extend_from_slice(&data);
            w.write(Bytes::from(data)).await.expect("write");
        }
        assert_eq!(w.finish().await.expect("finish"), expected.len() as u64);
        let written = std::fs::read(dir.path().join("mixed/file.ndjson")).expect("read");
        assert!(written == expected, "content differs");
        assert!(temp_files(dir.path()).is_empty());
    }
}
