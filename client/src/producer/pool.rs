//! [`BufferPool`]: the buffers of batches whose request was answered, kept for the next
//! batches to encode into.
//!
//! A batch buffer freed to the allocator comes back, more often than not, as memory the
//! kernel has to fault in and zero again: in `fjord perf produce` 80,000–90,000 page
//! faults per 500 MB, a fifth of the producer's CPU. The senders hand their answered
//! batches' buffers back here instead, and the accumulator takes them for new batches.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// Buffers of one size, shared by the accumulator (which takes) and the senders (which
/// give back). Holds at most `max_buffers`; what comes back beyond that is freed.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    free: Arc<Mutex<Vec<BytesMut>>>,
    /// The capacity of each buffer handed out.
    capacity: usize,
    max_buffers: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `max_bytes` of them.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> BufferPool {
        BufferPool {
            free: Arc::default(),
            capacity,
            max_buffers: max_bytes / capacity.max(1),
        }
    }

    /// The capacity of each buffer handed out.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// An empty buffer of at least the pool's capacity: a returned one if there is one.
    pub(crate) fn take(&self) -> BytesMut {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| BytesMut::with_capacity(self.capacity))
    }

    /// Keeps `bytes`'s buffer for reuse if nothing else refers to it, its capacity suits
    /// the pool (a batch that grew past twice the size, for one large record, is freed)
    /// and the pool has room.
    pub(crate) fn give(&self, bytes: Bytes) {
        let Ok(mut buf) = bytes.try_into_mut() else {
            return;
        };
        if !(self.capacity..=2 * self.capacity).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.max_buffers {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_handed_out_again() {
        let pool = BufferPool::new(1024, 4096);
        let mut buf = pool.take();
        assert!(buf.capacity() >= 1024);
        buf.extend_from_slice(&[7; 1000]);
        let ptr = buf.as_ptr();
        pool.give(buf.freeze());
        assert_eq!(pool.len(), 1);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same memory");
        assert!(again.is_empty());
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn shared_oversized_and_surplus_buffers_are_not_kept() {
        let pool = BufferPool::new(1024, 2048);
        // Still referred to elsewhere: the other holder may read it.
        let shared = pool.take().freeze();
        let other = shared.clone();
        pool.give(shared);
        assert_eq!(pool.len(), 0);
        drop(other);
        // Grown for one large record.
        pool.give(BytesMut::with_capacity(64 * 1024).freeze());
        assert_eq!(pool.len(), 0);
        // At most 2048 / 1024 buffers.
        for _ in 0..3 {
            let mut buf = pool.take();
            buf.extend_from_slice(b"x");
            pool.give(buf.freeze());
        }
        let (a, b, c) = (pool.take(), pool.take(), pool.take());
        for buf in [a, b, c] {
            let mut buf = buf;
            buf.extend_from_slice(b"x");
            pool.give(buf.freeze());
        }
        assert_eq!(pool.len(), 2);
    }
}
