//! The L2 circuit breaker: after consecutive L2 failures, reads and writes skip L2 for a while
//! (reads go to L1 or the loader, writes fail at once), then one call probes it, and a success
//! closes the breaker again. While Redis is down, no read waits out a timeout.

use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use cache_core::{Codec, Error, ErrorKind, Result};

use super::Inner;

/// The breaker's settings: `failures` consecutive L2 failures open it for `open_for`; 0
/// failures turns it off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BreakerConfig {
    pub(crate) failures: u32,
    pub(crate) open_for: Duration,
}

/// The breaker's state, shared by every call of the node.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    consecutive: AtomicU32,
    /// Nanoseconds since the epoch until which L2 is skipped; 0 while closed.
    open_until: AtomicU64,
    /// One call is probing L2 after the open period.
    probing: AtomicBool,
}

/// What an L2 call through the breaker came to.
pub(crate) enum Call<T> {
    /// Skipped: the breaker is open.
    Skipped,
    /// Sent to L2.
    Done(Result<T>),
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether a call may go to L2 at `now`: always while closed; while open, only the one
    /// call that probes once the period is over.
    fn admit(&self, now: u64) -> bool {
        let until = self.open_until.load(SeqCst);
        if until == 0 {
            return true;
        }
        now >= until
            && self
                .probing
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_ok()
    }

    fn succeeded(&self) {
        self.consecutive.store(0, SeqCst);
        self.open_until.store(0, SeqCst);
        self.probing.store(false, SeqCst);
    }

    /// Counts a failure at `now`; whether it opened (or re-opened) the breaker.
    fn failed(&self, now: u64) -> bool {
        let failures = self.consecutive.fetch_add(1, SeqCst).saturating_add(1);
        let probe_failed = self.probing.swap(false, SeqCst);
        if self.config.failures == 0 || !(probe_failed || failures >= self.config.failures) {
            return false;
        }
        let open_for = u64::try_from(self.config.open_for.as_nanos()).unwrap_or(u64::MAX);
        self.open_until
            .store(now.saturating_add(open_for).max(1), SeqCst);
        true
    }

    /// Whether L2 is being skipped.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(SeqCst) != 0
    }
}

impl<C: Codec> Inner<C> {
    /// Runs one L2 read or write through the breaker. An [`ErrorKind::L2`] failure counts
    /// towards opening it (other errors are the caller's, not L2's health); a success closes
    /// it. A skipped call is counted in `l2_skipped`.
    pub(super) async fn l2_call<T, F, Fut>(&self, call: F) -> Call<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if !self.breaker.admit(self.clock.now().as_nanos()) || self.l2_moved() {
            self.counters.l2_skipped.add(1);
            return Call::Skipped;
        }
        let result = call().await;
        match &result {
            Ok(_) => self.breaker.succeeded(),
            Err(e) if e.kind() == ErrorKind::L2 => {
                if self.breaker.failed(self.clock.now().as_nanos()) {
                    self.counters.l2_breaker_opened.add(1);
                    tracing::warn!(
                        node_id = %self.node_id,
                        open_for = ?self.breaker.config.open_for,
                        "L2 keeps failing: skipping it (reads go to L1 or the loader, writes \
                         fail at once) until a probe succeeds"
                    );
                }
            }
            Err(_) => {}
        }
        Call::Done(result)
    }

    /// The error a write gets while the breaker is open.
    pub(super) fn l2_skipped_error(&self, op: &str) -> Error {
        Error::new(
            ErrorKind::L2,
            format!(
                "{op} not sent: L2 failed {} times in a row, and is skipped until a probe \
                 succeeds (at most {:?} from its last failure)",
                self.breaker.config.failures, self.breaker.config.open_for
            ),
        )
    }
}
