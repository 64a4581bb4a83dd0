//! Reused I/O buffers.
//!
//! An export moves every byte through a read buffer and a write buffer. Allocated fresh, each
//! buffer's pages are faulted in and zeroed by the kernel on first touch: about one fault per
//! 4 KiB moved, a tenth of a small export's CPU. Buffers from this pool come back when the
//! last [`Bytes`] cut from them is dropped, with their pages still mapped.

use std::sync::{Arc, LazyLock, Mutex, Weak};

use bytes::Bytes;

/// Size of every pooled buffer: one read of a local file, one hand-over to an object writer.
pub const BUFFER_BYTES: usize = 512 * 1024;

/// Buffers kept for reuse; more are allocated (and freed) when more are in use at once.
/// Enough for the reads and writes of several chunks in flight, 8 MiB at most.
const KEEP: usize = 16;

static POOL: LazyLock<Arc<BufferPool>> = LazyLock::new(|| Arc::new(BufferPool::new(KEEP)));

/// The process's pool of [`BUFFER_BYTES`] buffers.
pub fn pool() -> &'static Arc<BufferPool> {
    &POOL
}

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    fn new(keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// An empty buffer with room for [`BUFFER_BYTES`].
    pub fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(BUFFER_BYTES),
        }
    }

    /// `buf` as [`Bytes`]; the buffer returns to the pool when the last view of it is dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(self),
        })
    }

    /// Returns a buffer that was never frozen.
    pub fn recycle(&self, buf: Vec<u8>) {
        // A buffer that grew (or was never one of ours) is not kept: the pool's memory stays
        // bounded by `keep` buffers of the one size.
        if buf.capacity() != BUFFER_BYTES {
            return;
        }
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.keep
        {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().map(|f| f.len()).unwrap_or(0)
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Weak<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.recycle(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_view_is_dropped() {
        let pool = Arc::new(BufferPool::new(2));
        let mut b = pool.take();
        b.extend_from_slice(b"hello world");
        let addr = b.as_ptr();
        let bytes = pool.freeze(b);
        let word = bytes.slice(6..);
        drop(bytes);
        assert_eq!(pool.kept(), 0, "a view is still alive");
        assert_eq!(&word[..], b"world");
        drop(word);
        assert_eq!(pool.kept(), 1);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), addr, "the same memory is handed out again");
    }

    #[test]
    fn keeps_at_most_its_limit_and_only_its_size() {
        let pool = Arc::new(BufferPool::new(2));
        let views: Vec<Bytes> = (0..3).map(|_| pool.freeze(pool.take())).collect();
        drop(views);
        assert_eq!(pool.kept(), 2, "the third buffer is freed");
        let mut grown = pool.take();
        grown.reserve(BUFFER_BYTES + 1);
        drop(pool.freeze(grown));
        assert_eq!(pool.kept(), 1, "a buffer that grew is not kept");
        drop(pool.freeze(Vec::with_capacity(10)));
        assert_eq!(pool.kept(), 1, "a buffer of another size is not kept");
        pool.recycle(Vec::with_capacity(BUFFER_BYTES));
        assert_eq!(pool.kept(), 2);
    }
}
