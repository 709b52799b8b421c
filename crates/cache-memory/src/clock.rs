//! Clocks: the system clock for production and a manual clock for deterministic tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache_core::{Clock, Timestamp};

/// The wall clock: [`SystemTime::now`] as nanoseconds since the Unix epoch.
///
/// A system time before the epoch reads as the epoch, and one past the year 2554 (where
/// nanoseconds overflow `u64`) reads as the far future; neither happens on a sane host.
///
/// [`Clock::expiry_now`], read on every L1 hit, is the kernel's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE` through the coarsetime crate: about 5 ns where `SystemTime::now`
/// costs about 30 ns on our machines) mapped onto the wall clock, re-anchored every second, and
/// pushed [`EXPIRY_SLACK`] ahead so it is never behind the wall clock: entries expire up to that
/// much early, never late.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

/// How far ahead of the wall clock [`SystemClock::expiry_now`] reads: more than the coarse
/// clock's resolution (one kernel tick, 4 ms at 250 Hz) plus the drift it can gather in the
/// second between re-anchorings.
pub const EXPIRY_SLACK: Duration = Duration::from_millis(10);

/// Wall-clock nanoseconds minus coarse-clock nanoseconds at the last anchoring (0 = never).
static COARSE_OFFSET: AtomicU64 = AtomicU64::new(0);
/// Coarse-clock nanoseconds when the offset was last taken.
static COARSE_ANCHORED_AT: AtomicU64 = AtomicU64::new(0);
const REANCHOR_EVERY: u64 = 1_000_000_000;

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn coarse_nanos() -> u64 {
    // `now_without_cache_update` reads the clock without writing coarsetime's shared cache,
    // so hits on several threads do not fight over one cache line.
    coarsetime::Duration::from_ticks(coarsetime::Instant::now_without_cache_update().as_ticks())
        .as_nanos()
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(wall_nanos())
    }

    fn expiry_now(&self) -> Timestamp {
        let coarse = coarse_nanos();
        let mut offset = COARSE_OFFSET.load(Ordering::Relaxed);
        if offset == 0
            || coarse.saturating_sub(COARSE_ANCHORED_AT.load(Ordering::Relaxed)) >= REANCHOR_EVERY
        {
            // Racing threads may each re-anchor; every value they store is a valid offset.
            offset = wall_nanos().wrapping_sub(coarse).max(1);
            COARSE_OFFSET.store(offset, Ordering::Relaxed);
            COARSE_ANCHORED_AT.store(coarse, Ordering::Relaxed);
        }
        let slack = u64::try_from(EXPIRY_SLACK.as_nanos()).unwrap_or(u64::MAX);
        Timestamp::from_nanos(coarse.wrapping_add(offset).saturating_add(slack))
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
