//! Reused I/O buffers.
//!
//! An export moves every byte through a read buffer and a write buffer. Allocated fresh, each
//! buffer's pages are faulted in and zeroed by the kernel on first touch: about one fault per
//! 4 KiB moved, a tenth of a small export's CPU. A [`Buffer`] goes back to the pool however it
//! ends: dropped, or frozen into [`Bytes`] whose last view is dropped.

use std::sync::{LazyLock, Mutex};

use bytes::Bytes;

/// Size of every pooled buffer: one read of a local file, one hand-over to an object writer.
pub const BUFFER_BYTES: usize = 512 * 1024;

/// Buffers kept for reuse; more are allocated (and freed) when more are in use at once.
/// Enough for the reads and writes of the chunks in flight (about five buffers each), and
/// 8 MiB at most.
const KEEP: usize = 16;

static POOL: LazyLock<BufferPool> = LazyLock::new(|| BufferPool::new(KEEP));

/// The process's pool of [`BUFFER_BYTES`] buffers.
pub fn pool() -> &'static BufferPool {
    &POOL
}

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

/// A buffer with room for [`BUFFER_BYTES`], back to its pool when dropped.
pub struct Buffer {
    vec: Vec<u8>,
    pool: &'static BufferPool,
}

impl BufferPool {
    fn new(keep: usize) -> Self {
        BufferPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// An empty buffer with room for [`BUFFER_BYTES`].
    pub fn take(&'static self) -> Buffer {
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let vec = match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(BUFFER_BYTES),
        };
        Buffer { vec, pool: self }
    }

    fn give_back(&self, buf: Vec<u8>) {
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

impl Buffer {
    /// The buffer as [`Bytes`]; it returns to the pool when the last view of it is dropped.
    pub fn freeze(mut self) -> Bytes {
        let vec = std::mem::take(&mut self.vec);
        Bytes::from_owner(Frozen {
            vec,
            pool: self.pool,
        })
    }
}

impl std::ops::Deref for Buffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.vec
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.vec));
    }
}

/// The owner behind a frozen buffer's [`Bytes`].
struct Frozen {
    vec: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        &self.vec
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.vec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked_pool(keep: usize) -> &'static BufferPool {
        Box::leak(Box::new(BufferPool::new(keep)))
    }

    #[test]
    fn a_buffer_comes_back_when_its_last_view_is_dropped() {
        let pool = leaked_pool(2);
        let mut b = pool.take();
        b.extend_from_slice(b"hello world");
        let addr = b.as_ptr();
        let bytes = b.freeze();
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
    fn a_dropped_buffer_comes_back_too() {
        let pool = leaked_pool(2);
        let mut b = pool.take();
        b.push(1);
        drop(b);
        assert_eq!(pool.kept(), 1);
    }

    #[test]
    fn keeps_at_most_its_limit_and_only_its_size() {
        let pool = leaked_pool(2);
        let views: Vec<Bytes> = (0..3).map(|_| pool.take().freeze()).collect();
        drop(views);
        assert_eq!(pool.kept(), 2, "the third buffer is freed");
        let mut grown = pool.take();
        grown.reserve(BUFFER_BYTES + 1);
        drop(grown.freeze());
        assert_eq!(pool.kept(), 1, "a buffer that grew is not kept");
        pool.give_back(Vec::with_capacity(10));
        assert_eq!(pool.kept(), 1, "a buffer of another size is not kept");
        pool.give_back(Vec::with_capacity(BUFFER_BYTES));
        assert_eq!(pool.kept(), 2);
    }
}
