//! Rate-limited logging for what a guest can cause.
//!
//! A hostile guest can make a device warn on every notification (a broken
//! ring, a bad request). Logged unbounded, that fills the host's terminal,
//! journal or log file at the guest's pace. [`guest_warn!`] logs at most
//! [`LogLimit::BURST`] lines a second per call site; the first line after a
//! dropped stretch says how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The state of one call site's limit.
pub struct LogLimit {
    /// The second (since the first use in this process) being counted.
    window: AtomicU64,
    /// Lines asked for in that second.
    count: AtomicU64,
    /// Lines dropped since the last one logged.
    dropped: AtomicU64,
}

impl LogLimit {
    /// Lines a call site may log per second.
    pub const BURST: u64 = 10;

    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether to log a line now: `Some(n)` with the number of lines
    /// dropped before it, or None to drop it.
    pub fn allow(&self) -> Option<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        self.allow_at(START.get_or_init(Instant::now).elapsed().as_secs())
    }

    /// [`LogLimit::allow`] at second `now`.
    pub fn allow_at(&self, now: u64) -> Option<u64> {
        let window = self.window.load(Ordering::Relaxed);
        if window != now
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::BURST {
            Some(self.dropped.swap(0, Ordering::Relaxed))
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!` for messages a guest can cause, limited per call site
/// ([`LogLimit`]).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        match LIMIT.allow() {
            Some(0) => log::warn!($($arg)+),
            Some(dropped) => log::warn!(
                "{} ({dropped} similar lines before this one were not logged)",
                format_args!($($arg)+)
            ),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_second_then_the_count_of_what_was_dropped() {
        let limit = LogLimit::new();
        for _ in 0..LogLimit::BURST {
            assert_eq!(limit.allow_at(5), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.allow_at(5), None);
        }
        assert_eq!(limit.allow_at(6), Some(1000));
        assert_eq!(limit.allow_at(6), Some(0));
    }

    #[test]
    fn the_macro_logs_and_drops_without_panicking() {
        for i in 0..100 {
            guest_warn!("guest message {i}");
        }
    }
}
