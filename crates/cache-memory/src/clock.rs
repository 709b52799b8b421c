//! Clocks: the system clock for production and a manual clock for deterministic tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache_core::{Clock, Timestamp};

/// The wall clock: [`SystemTime::now`] as nanoseconds since the Unix epoch.
///
/// A system time before the epoch reads as the epoch, and one past the year 2554 (where
/// nanoseconds overflow `u64`) reads as the far future; neither happens on a sane host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Timestamp::from_nanos(nanos)
    }
}

/// A clock that only moves when told to, so TTL and staleness tests need no sleeps.
///
/// It is shared by reference (`Arc<ManualClock>` coerces to `Arc<dyn Clock>`), and every method
/// takes `&self`, so a test can advance the clock a store is reading. [`ManualClock::default`]
/// starts at the Unix epoch.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start` until moved.
    pub fn new(start: Timestamp) -> Self {
        Self {
            nanos: AtomicU64::new(start.as_nanos()),
        }
    }

    /// Moves the clock forward by `by`, saturating at the far future.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Sets the clock to `to`, which may be earlier than it reads now (to test a clock that
    /// steps backwards).
    pub fn set(&self, to: Timestamp) {
        self.nanos.store(to.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}
