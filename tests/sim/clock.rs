//! Simulated time: every clock of a run reads tokio's paused clock, so time moves only when
//! every task waits, and a run is reproducible to the nanosecond.

use std::time::Duration;

use cache_core::{Clock, Timestamp};
use tokio::time::Instant;

/// Where the simulated wall clock starts: 2025-06-15, a plausible "now".
const BASE: Timestamp = Timestamp::from_nanos(1_750_000_000_000_000_000);

/// A node's (or L2's) wall clock: the paused tokio clock since the run's origin, on top of
/// [`BASE`], shifted by the node's skew. Nodes disagree by seconds; the history checker uses
/// [`since`], the one true simulated time.
#[derive(Debug)]
pub(crate) struct SimClock {
    origin: Instant,
    skew_nanos: i64,
}

impl SimClock {
    /// A clock `skew_ms` milliseconds ahead of true time (behind when negative).
    pub(crate) fn new(origin: Instant, skew_ms: i64) -> Self {
        Self {
            origin,
            skew_nanos: skew_ms.saturating_mul(1_000_000),
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        let elapsed = i128::try_from(since(self.origin).as_nanos()).unwrap_or(i128::MAX);
        let nanos = i128::from(BASE.as_nanos()) + elapsed + i128::from(self.skew_nanos);
        Timestamp::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }
}

/// True simulated time since `origin`: what the history records.
pub(crate) fn since(origin: Instant) -> Duration {
    Instant::now().saturating_duration_since(origin)
}
