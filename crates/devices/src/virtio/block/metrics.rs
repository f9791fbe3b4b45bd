//! Counters of a virtio-blk device.
//!
//! The device's worker updates a shared [`BlockMetrics`] with relaxed atomic
//! adds; anyone holding the `Arc` can read it while the device runs, or take a
//! serializable [`BlockMetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters of one disk.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Bytes read from the image by successful IN requests.
    pub read_bytes: AtomicU64,
    /// Bytes written to the image by successful OUT requests.
    pub write_bytes: AtomicU64,
    /// IN requests received.
    pub read_requests: AtomicU64,
    /// OUT requests received.
    pub write_requests: AtomicU64,
    /// FLUSH requests received.
    pub flush_requests: AtomicU64,
    /// DISCARD requests received.
    pub discard_requests: AtomicU64,
    /// WRITE_ZEROES requests received.
    pub write_zeroes_requests: AtomicU64,
    /// Requests completed with a status other than OK, or dropped because
    /// the chain had no usable status byte.
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`BlockMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BlockMetricsSnapshot {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    pub discard_requests: u64,
    pub write_zeroes_requests: u64,
    pub errors: u64,
}

impl BlockMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> BlockMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockMetricsSnapshot {
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            read_requests: get(&self.read_requests),
            write_requests: get(&self.write_requests),
            flush_requests: get(&self.flush_requests),
            discard_requests: get(&self.discard_requests),
            write_zeroes_requests: get(&self.write_zeroes_requests),
            errors: get(&self.errors),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
