//! Group commit: many appenders wait for durability, one of them fsyncs for all.
//!
//! An appender that needs its batch durable calls [`GroupCommit::wait_durable`] with the
//! offset after its batch. If that offset is already durable it returns at once; if a
//! flush is running it waits for it and checks again; otherwise it becomes the flusher:
//! it runs the flush (which syncs everything appended so far, including the batches of
//! everyone who arrived meanwhile) without holding the lock, publishes the new durable
//! offset and wakes the others. So N concurrent appends cost about two fsyncs, not N.
//!
//! The durable offset is published on a `watch` ([`GroupCommit::subscribe`]), with
//! whether a flush failed, so async code can wait for it without a thread: it is written
//! only under the state's lock, and read there by the blocking waiters.
//!
//! Threading: `Sync`; blocking (std) waits. The broker calls it from a blocking task.

use std::sync::{Condvar, Mutex};

use tokio::sync::watch;

use super::Result;

#[derive(Debug)]
struct State {
    flushing: bool,
    flushes: u64,
}

/// What [`GroupCommit::subscribe`] watches: the offset below which everything is durable,
/// and whether a flush has failed (a failed flush takes the log offline for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    pub offset: i64,
    pub failed: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    flushed: Condvar,
    durable: watch::Sender<Durable>,
}

impl GroupCommit {
    /// `durable_offset`: every offset below it is already durable.
    pub fn new(durable_offset: i64) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                flushing: false,
                flushes: 0,
            }),
            flushed: Condvar::new(),
            durable: watch::Sender::new(Durable {
                offset: durable_offset,
                failed: false,
            }),
        }
    }

    pub fn durable_offset(&self) -> i64 {
        self.durable.borrow().offset
    }

    /// The durable offset and every change of it.
    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// Wakes the subscribers without changing anything (they look again).
    pub fn wake(&self) {
        self.durable.send_modify(|_| {});
    }

    /// How many flushes have run (for tests and metrics).
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns once every offset below `offset` is durable. `flush` makes everything
    /// appended so far durable and returns the new durable offset; it runs on at most one
    /// thread at a time. An error of the flush goes to the thread that ran it; the others
    /// try again.
    pub fn wait_durable(&self, offset: i64, flush: impl FnOnce() -> Result<i64>) -> Result<()> {
        let mut state = self.lock();
        loop {
            if self.durable_offset() >= offset {
                return Ok(());
            }
            if !state.flushing {
                break;
            }
            state = self
                .flushed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.flushing = true;
        drop(state);
        // Even if `flush` panics, the next waiter must be able to take over.
        let guard = FlushingGuard(self);
        let result = flush();
        // Published before `flushing` is cleared: a waiter woken then sees the new durable
        // offset and does not start a flush of nothing.
        {
            let _state = self.lock();
            match result {
                Ok(durable) => self.durable.send_if_modified(|d| {
                    let moved = durable > d.offset;
                    d.offset = d.offset.max(durable);
                    moved
                }),
                // Nobody waiting for the watch is going to see its offset durable.
                Err(_) => self
                    .durable
                    .send_if_modified(|d| !std::mem::replace(&mut d.failed, true)),
            };
        }
        drop(guard);
        result.map(|_| ())
    }

    /// After a truncation: offsets at or above `offset` are no longer durable. `flush`
    /// closures must return the offset the log actually published (the log's recovery
    /// point), which a truncation during the flush keeps from moving.
    pub fn truncate(&self, offset: i64) {
        let _state = self.lock();
        self.durable.send_if_modified(|d| {
            let lowered = offset < d.offset;
            d.offset = d.offset.min(offset);
            lowered
        });
    }
}

/// Clears `flushing` and wakes the waiters when the flusher is done, even by panic.
struct FlushingGuard<'a>(&'a GroupCommit);

impl Drop for FlushingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.flushing = false;
        state.flushes += 1;
        drop(state);
        self.0.flushed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_flush_does_not_block_the_next_waiter() {
        let commit = std::sync::Arc::new(GroupCommit::new(0));
        let c = commit.clone();
        let panicked = std::thread::spawn(move || {
            c.wait_durable(5, || panic!("disk on fire")).unwrap();
        })
        .join();
        assert!(panicked.is_err());
        commit.wait_durable(5, || Ok(5)).unwrap();
        assert_eq!(commit.durable_offset(), 5);
        assert_eq!(commit.flushes(), 2);
    }

    #[test]
    fn a_failed_flush_reports_and_publishes_nothing() {
        let commit = GroupCommit::new(0);
        let err = commit.wait_durable(5, || {
            Err(crate::storage::StorageError::LogOffline { dir: "x".into() })
        });
        assert!(err.is_err());
        assert_eq!(commit.durable_offset(), 0);
        assert!(commit.subscribe().borrow().failed, "the watch says so");
    }
}
