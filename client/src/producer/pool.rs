//! [`BufferPool`]: the buffers of batches whose request was answered, kept for the next
//! batches to encode into.
//!
//! A batch buffer freed to the allocator comes back, more often than not, as memory the
//! kernel has to fault in and zero again: in `fjord perf produce` 80,000–100,000 page
//! faults per 500 MB, a fifth of the producer's CPU. The senders hand their answered
//! batches' buffers back here instead, and the accumulator takes them for new batches.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// Buffers of one size, shared by the accumulator (which takes) and the senders (which
/// give back). Holds buffers of at most `max_bytes` in all (counted by their capacity);
/// what comes back beyond that is freed. It does not shrink: a producer keeps what its
/// busiest moment left idle until it is dropped, as Kafka's producer keeps its free
/// batch buffers.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    free: Arc<Mutex<Free>>,
    /// The capacity of each buffer handed out.
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<BytesMut>,
    /// The sum of their capacities.
    bytes: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `max_bytes` of them.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> BufferPool {
        BufferPool {
            free: Arc::default(),
            capacity,
            max_bytes,
        }
    }

    /// An empty buffer of at least the pool's capacity: a returned one if there is one.
    pub(crate) fn take(&self) -> BytesMut {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.buffers.pop() {
            Some(buf) => {
                free.bytes -= buf.capacity();
                buf
            }
            None => BytesMut::with_capacity(self.capacity),
        }
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
        if free.bytes + buf.capacity() <= self.max_bytes {
            free.bytes += buf.capacity();
            free.buffers.push(buf);
        }
    }

    /// Buffers held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buffers
            .len()
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
        let pool = BufferPool::new(1024, 2 * 1024);
        // Still referred to elsewhere: the other holder may read it.
        let shared = pool.take().freeze();
        let other = shared.clone();
        pool.give(shared);
        assert_eq!(pool.len(), 0);
        drop(other);
        // Grown for one large record.
        pool.give(BytesMut::with_capacity(64 * 1024).freeze());
        assert_eq!(pool.len(), 0);
        // At most 2 KiB of buffers: three of 1 KiB come back, two are kept.
        let taken: Vec<BytesMut> = (0..3).map(|_| pool.take()).collect();
        for mut buf in taken {
            buf.extend_from_slice(b"x");
            pool.give(buf.freeze());
        }
        assert_eq!(pool.len(), 2);
        // Counted by capacity: a buffer of 1.5 KiB does not fit beside them, nor after
        // one is taken (1 + 1.5 > 2 KiB).
        pool.give(BytesMut::with_capacity(1536).freeze());
        assert_eq!(pool.len(), 2);
        let _one = pool.take();
        pool.give(BytesMut::with_capacity(1536).freeze());
        assert_eq!(pool.len(), 1);
    }
}
