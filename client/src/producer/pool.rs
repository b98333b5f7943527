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
///
/// It also holds *chunks*: larger buffers that a partition sending batches back to back
/// builds several batches in, one after the other, so that a request's batches lie end
/// to end in memory and go out as one piece. A chunk comes back whole once nothing refers
/// to any of its batches.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool {
    free: Arc<Mutex<Free>>,
    /// The capacity of each buffer handed out.
    capacity: usize,
    /// The capacity of each chunk handed out (0: none are).
    chunk: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<BytesMut>,
    chunks: Vec<BytesMut>,
    /// The sum of their capacities.
    bytes: usize,
}

impl BufferPool {
    /// A pool of buffers of `capacity` bytes that keeps at most `max_bytes` of them.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> BufferPool {
        BufferPool {
            free: Arc::default(),
            capacity,
            chunk: 0,
            max_bytes,
        }
    }

    /// The pool, also handing out chunks of `chunk` bytes (if that is over twice the
    /// buffers' capacity; else none).
    pub(crate) fn with_chunks(mut self, chunk: usize) -> BufferPool {
        self.chunk = if chunk > 2 * self.capacity { chunk } else { 0 };
        self
    }

    /// The capacity of a chunk (0 when there are none).
    pub(crate) fn chunk(&self) -> usize {
        self.chunk
    }

    /// The capacity of a buffer.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// An empty buffer of at least the pool's capacity: a returned one if there is one.
    pub(crate) fn take(&self) -> BytesMut {
        self.take_sized(false)
    }

    /// An empty chunk (a buffer if the pool has no chunks).
    pub(crate) fn take_chunk(&self) -> BytesMut {
        self.take_sized(self.chunk > 0)
    }

    fn take_sized(&self, chunk: bool) -> BytesMut {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let (list, capacity) = if chunk {
            (&mut free.chunks, self.chunk)
        } else {
            (&mut free.buffers, self.capacity)
        };
        match list.pop() {
            Some(buf) => {
                free.bytes -= buf.capacity();
                buf
            }
            None => BytesMut::with_capacity(capacity),
        }
    }

    /// Keeps `bytes`'s buffer for reuse if nothing else refers to it, its capacity suits
    /// the pool (a batch that grew past twice the size, for one large record, is freed)
    /// and the pool has room. The last piece of a chunk to come back brings back the
    /// whole chunk.
    pub(crate) fn give(&self, bytes: Bytes) {
        let Ok(mut buf) = bytes.try_into_mut() else {
            return;
        };
        buf.clear();
        // Alone now: a piece of a chunk reclaims the chunk's whole memory; a buffer of its
        // own cannot grow without allocating, and stays as it is.
        if self.chunk > 0 {
            let _whole = buf.try_reclaim(self.chunk);
        }
        let fits = |capacity: usize| (capacity..=2 * capacity).contains(&buf.capacity());
        let chunk = self.chunk > 0 && fits(self.chunk);
        if !chunk && !fits(self.capacity) {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.bytes + buf.capacity() <= self.max_bytes {
            free.bytes += buf.capacity();
            if chunk {
                free.chunks.push(buf);
            } else {
                free.buffers.push(buf);
            }
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

    /// Chunks held.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chunks
            .len()
    }
}

/// Appends `piece` to `pieces`, joined to the last one (without a copy) if it starts
/// where that one ends: two batches built one after the other in a chunk become one
/// piece, sent with one write.
pub(crate) fn push_joined(pieces: &mut Vec<BytesMut>, piece: BytesMut) {
    match pieces.last_mut() {
        Some(last) if last.as_ptr().wrapping_add(last.len()) == piece.as_ptr() => {
            last.unsplit(piece)
        }
        _ => pieces.push(piece),
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

    #[test]
    fn a_chunk_comes_back_whole_with_its_last_piece() {
        let pool = BufferPool::new(1024, 64 * 1024).with_chunks(8 * 1024);
        let mut chunk = pool.take_chunk();
        assert!(chunk.capacity() >= 8 * 1024);
        let start = chunk.as_ptr();
        // Three batches built one after the other in it, the room split off each time.
        let mut pieces = Vec::new();
        for len in [1000, 2000, 1500] {
            chunk.extend_from_slice(&vec![1; len]);
            let room = chunk.split_off(len);
            pieces.push(std::mem::replace(&mut chunk, room).freeze());
        }
        assert_eq!(pieces[1].as_ptr(), start.wrapping_add(1000), "end to end");

        // Pieces still shared with others are let go, not kept.
        let last = pieces.pop().expect("three");
        for piece in pieces {
            pool.give(piece);
        }
        drop(chunk);
        assert_eq!((pool.chunks(), pool.len()), (0, 0));
        pool.give(last);
        assert_eq!(
            (pool.chunks(), pool.len()),
            (1, 0),
            "the whole chunk is back"
        );
        let again = pool.take_chunk();
        assert_eq!(again.as_ptr(), start);
        assert!(again.capacity() >= 8 * 1024 && again.is_empty());
        // A plain buffer still goes back among the buffers.
        pool.give(pool.take().freeze());
        assert_eq!((pool.chunks(), pool.len()), (0, 1));
        // Chunks no larger than twice a buffer are none at all.
        let small = BufferPool::new(1024, 64 * 1024).with_chunks(2048);
        assert_eq!(small.chunk(), 0);
        assert!(small.take_chunk().capacity() < 2048);
    }

    #[test]
    fn pieces_end_to_end_are_joined_without_a_copy() {
        let mut chunk = BytesMut::with_capacity(4096);
        chunk.extend_from_slice(&[1; 3000]);
        let start = chunk.as_ptr();
        let second = chunk.split_off(1000);
        let mut pieces = Vec::new();
        push_joined(&mut pieces, chunk);
        push_joined(&mut pieces, second);
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].as_ptr(), pieces[0].len()), (start, 3000));
        // A piece from elsewhere stays apart.
        push_joined(&mut pieces, BytesMut::from(&b"other"[..]));
        assert_eq!(pieces.len(), 2);
    }
}
