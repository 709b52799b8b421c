//! Statistics and health of a node.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cache_core::Timestamp;

/// Stripes a thread can own outright; threads beyond this many alive at once share one more.
const STRIPES: usize = 16;
/// The stripe of threads that own none: bumped with an atomic read-modify-write.
const SHARED: usize = STRIPES;

/// One cache line, so stripes bumped by different threads never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// A counter split over cache lines, each owned by one thread: the L1 hit path bumps one on
/// every hit, so it must cost next to nothing.
///
/// A thread that owns its stripe (see [`Lease`]) bumps it with a plain load and store, not a
/// locked read-modify-write: nobody else writes that line, so no update can be lost, and on
/// the machines we measure a locked add costs as much as a fifth of a whole L1 hit. Threads
/// that own no stripe (more than [`STRIPES`] alive at once) share the last one and bump it
/// atomically. Reading sums the stripes (statistics need no exact instant).
#[derive(Debug, Default)]
pub(crate) struct Counter([Line; STRIPES + 1]);

/// Stripes given back by exited threads, and the next never-leased one.
static FREE_STRIPES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// A thread's stripe, the same in every [`Counter`]; an owned stripe is handed back when the
/// thread exits. The hand-over goes through [`FREE_STRIPES`]'s mutex, so the next owner sees
/// every store the last one made.
struct Lease(usize);

impl Lease {
    fn take() -> Lease {
        let reused = FREE_STRIPES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Lease(reused.unwrap_or_else(|| {
            NEXT_STRIPE
                .fetch_update(Relaxed, Relaxed, |next| {
                    (next < STRIPES).then_some(next + 1)
                })
                .unwrap_or(SHARED)
        }))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0 != SHARED {
            FREE_STRIPES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.0);
        }
    }
}

thread_local! {
    static STRIPE: Lease = Lease::take();
}

impl Counter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        // After the thread's lease is dropped (other thread-locals' destructors), the shared
        // stripe.
        let stripe = STRIPE.try_with(|lease| lease.0).unwrap_or(SHARED);
        let line = &self.0[stripe].0;
        if stripe == SHARED {
            line.fetch_add(n, Relaxed);
        } else {
            // Only this thread writes this line (see `Lease`): load and store lose nothing.
            line.store(line.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    /// The sum of the stripes.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|line| line.0.load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// The text of a counter's doc comment, from its `#[doc = ...]` attributes `stringify!`ed and
/// separated by `\u{1}` (`stringify!` may break a long one over lines), joined into one line,
/// for its help text.
fn doc_text(docs: &'static str) -> String {
    docs.split('\u{1}')
        .filter_map(|attribute| {
            let start = attribute.find('"')?;
            let end = attribute.rfind('"').filter(|&end| end > start)?;
            let text = attribute[start + 1..end].trim();
            let raw = attribute[..start].trim_end_matches('#').ends_with('r');
            Some(if raw {
                text.to_owned()
            } else {
                text.replace("\\\"", "\"")
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters, bumped with relaxed atomics (they are statistics, not synchronisation).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: Counter, )*
            /// Nanoseconds since the epoch of the last applied event; 0 when none.
            pub(crate) last_event_nanos: AtomicU64,
            /// Applied events by propagation lag ([`LAG_BUCKETS`], then one above).
            pub(crate) lag: Histogram<{ LAG_BUCKETS.len() + 1 }>,
        }

        impl Stats {
            /// Every counter, as `(name, what it counts, value)`: the fields above, for
            /// exporters (see [`crate::EdgeCache::prometheus`]).
            pub fn counters(&self) -> Vec<(&'static str, String, u64)> {
                vec![ $( (stringify!($name), doc_text(concat!($(stringify!($doc), "\u{1}"),*)), self.$name), )* ]
            }
        }

        /// A snapshot of a node's counters, from [`crate::EdgeCache::stats`].
        #[non_exhaustive]
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct Stats {
            /// The node's id.
            pub node_id: String,
            /// The node's region.
            pub region: String,
            $( $(#[$doc])* pub $name: u64, )*
            /// Publications of logged changes that failed and wait to be republished (a node
            /// whose bus is not on L2's route; receivers replay those changes from the log).
            pub pending_publications: u64,
            /// Loads running now (one per key, however many callers wait on it), background
            /// ones (soft timeouts past, eager refreshes) included.
            pub loads_in_flight: u64,
            /// When the last event was applied.
            pub last_event_time: Option<Timestamp>,
            /// How late applied events were, from their issue to their application here.
            pub propagation_lag: LagHistogram,
            /// L1 use per namespace, in configuration order.
            pub namespaces: Vec<NamespaceStats>,
        }

        impl Counters {
            pub(crate) fn snapshot(&self, node_id: &str, region: &str, namespaces: Vec<NamespaceStats>) -> Stats {
                let last = self.last_event_nanos.load(Relaxed);
                Stats {
                    node_id: node_id.to_owned(),
                    region: region.to_owned(),
                    $( $name: self.$name.get(), )*
                    pending_publications: 0,
                    loads_in_flight: 0,
                    last_event_time: (last != 0).then(|| Timestamp::from_nanos(last)),
                    propagation_lag: self.lag.snapshot(&LAG_BUCKETS),
                    namespaces,
                }
            }
        }
    };
}

/// The upper bounds of the propagation-lag buckets of [`LagHistogram`].
pub const LAG_BUCKETS: [Duration; 14] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

impl Counters {
    /// Counts one applied event `lag` late.
    pub(crate) fn record_lag(&self, lag: Duration) {
        self.lag.record(&LAG_BUCKETS, lag);
    }
}

/// Applied events counted by how late they were: from the timestamp the issuing node wrote
/// (its clock) to their application on this node (this node's clock), so clock offsets between
/// nodes shift it. Replayed events count with their full delay.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LagHistogram {
    /// Each bucket's upper bound (inclusive; `None` for the last, unbounded one) and count, in
    /// increasing order of bound.
    pub buckets: Vec<(Option<Duration>, u64)>,
    /// The lags counted, added up.
    pub sum: Duration,
}

impl LagHistogram {
    /// Events counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// The upper bound of the bucket holding the `q`-quantile (0.0..=1.0) of the lags, or
    /// `None` when no event was counted or the quantile is in the unbounded bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bound, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return *bound;
            }
        }
        None
    }
}

counters! {
    /// Reads answered by L1.
    l1_hits,
    /// Reads answered by L2.
    l2_hits,
    /// Reads that found nothing (an L2 error counts here too).
    misses,
    /// Successful writes.
    sets,
    /// Invalidations this node issued (namespace, resource or key).
    invalidations,
    /// Notifications this node issued.
    notifications,
    /// Events published to the bus.
    events_published,
    /// Publishes that failed.
    publish_errors,
    /// Attempts to republish a pending publication (see
    /// [`Stats::pending_publications`]).
    publish_retries,
    /// Failed publications not kept for republishing because the pending set was full (see
    /// `EdgeCacheBuilder::max_pending_publications`); nodes that follow the log replay them.
    publications_dropped,
    /// Messages received from the bus (own ones included).
    events_received,
    /// Events applied to L1 (received from others or issued here).
    events_applied,
    /// Messages dropped because they could not be decoded.
    events_rejected,
    /// Reads and writes not sent to L2 because its circuit breaker was open (reads went to L1
    /// or the loader; writes failed at once).
    l2_skipped,
    /// Times the L2 circuit breaker opened (after consecutive failures, or a failed probe).
    l2_breaker_opened,
    /// Messages refused, before decoding, for more bytes than the node's bound.
    rejected_oversized,
    /// Messages refused, before decoding, for arrays and objects nested past the bound.
    rejected_too_deep,
    /// Events refused for naming more namespaces than the bound.
    rejected_too_many_namespaces,
    /// Events refused for naming more keys than the bound.
    rejected_too_many_keys,
    /// Messages refused for carrying no signature where the node requires one.
    rejected_unsigned,
    /// Messages refused for a signature field that is not `"<key id>:<64 hex digits>"`.
    rejected_malformed_signature,
    /// Messages refused for a signature by a key id the node's ring does not hold.
    rejected_unknown_key,
    /// Messages refused for a MAC that does not match them.
    rejected_bad_mac,
    /// Messages refused for an event id heard before, within the replay window.
    rejected_replayed,
    /// Messages refused for a timestamp farther from this node's clock than the replay window.
    rejected_stale,
    /// Own events received back and ignored.
    own_events_ignored,
    /// L2 operations that failed.
    l2_errors,
    /// L2 values that could not be decoded into the requested type (served as misses).
    decode_errors,
    /// Loader calls made by `get_or_load`.
    loads,
    /// Loader calls that failed (timeouts included).
    load_errors,
    /// Loader calls given up on after the load timeout (of the call or the namespace).
    load_timeouts,
    /// Reads answered by fail-safe: an entry's last value served past its expiry because its
    /// load failed or timed out, or L2 was unreachable.
    fail_safe_served,
    /// `get_or_load_owned` calls answered with the fail-safe value at their soft timeout,
    /// their load left to finish in the background (also in `fail_safe_served`).
    soft_timeouts,
    /// Background loads started by eager refresh (a hit near the end of its entry's life).
    eager_refreshes,
    /// Fill leases this node took in L2: it loaded a key the fleet missed.
    leases_taken,
    /// Times this node found a key's fill lease held by another and waited for its fill.
    lease_waits,
    /// Lease waits that ended with the holder's value read from L2 (no load here).
    lease_fills,
    /// Fills dropped because an invalidation or write happened while the value was being read.
    fills_fenced,
    /// Times L1 of event-driven namespaces was dropped because the bus lost events (nodes
    /// without an event log only).
    resyncs,
    /// Gaps found in a namespace's event log positions (events lost or reordered on the way).
    gaps_detected,
    /// Events read back from the log and applied (what pub/sub did not deliver in time).
    events_replayed,
    /// Events delivered again after they had been applied (a replay overtook pub/sub, or the
    /// transport duplicated them).
    duplicates_ignored,
    /// Reads of the event logs by the liveness check and catch-ups.
    log_checks,
    /// Liveness checks or catch-ups that could not read a log (L2 unreachable).
    log_check_failures,
    /// Namespace L1 drops because the log was trimmed past what the node missed (or so many
    /// events arrived out of order that the node could not keep track).
    drops_trimmed,
    /// Namespace L1 drops because the log started a new epoch (L2 restarted empty, evicted).
    drops_new_epoch,
    /// Namespace L1 drops because the log went back (a failover lost its last entries).
    drops_regressed,
    /// Times L2 moved to a promoted replica and this node invalidated its event-driven
    /// namespaces there before reading it again.
    failovers_recovered,
    /// Times a namespace under the shortened-TTL policy had its L1 emptied and refilled with
    /// short-lived entries because the log had not confirmed it within the bound.
    shortened_ttl_modes,
    /// Times the subscription was found deaf (the log moved for two liveness intervals and it
    /// delivered nothing) and asked to resubscribe.
    deaf_subscriptions,
}

/// L1 use of one namespace.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceStats {
    /// The namespace (cache type) name.
    pub name: String,
    /// Entries in L1.
    pub l1_entries: u64,
    /// Bytes charged in L1.
    pub l1_bytes: u64,
    /// The L1 budget.
    pub l1_capacity_bytes: u64,
    /// Where this node stands in the namespace's event log, on a node that follows one: the
    /// log's epoch and the number up to which every event was applied.
    pub log_applied: Option<(u64, u64)>,
    /// When the log last confirmed this node had applied every change of the namespace.
    pub log_confirmed_at: Option<Timestamp>,
    /// Whether reads may use the namespace's L1 right now (false while the node cannot be
    /// sure it heard every change and the outage policy says to bypass).
    pub l1_in_use: bool,
    /// How long the namespace's L1 was out of use because the node could not be sure it heard
    /// every change, as sampled by the liveness task (at each check: to within one liveness
    /// interval).
    pub l1_outage: Duration,
    /// How long L2 reads of the namespace took: each read past L1 by `get`, `get_key` and
    /// `get_or_load`, hit or miss (batched reads of `get_many` are not timed).
    pub l2_latency: LagHistogram,
    /// How long loaders of the namespace ran (`get_or_load`), failures and timeouts included.
    pub loader_latency: LagHistogram,
}

/// The upper bounds of the buckets of [`NamespaceStats::l2_latency`] and
/// [`NamespaceStats::loader_latency`].
pub const LATENCY_BUCKETS: [Duration; 16] = [
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(10),
];

/// A live histogram of durations: `N - 1` bucket bounds, given on each call, then one bucket
/// above them; bumped with relaxed atomics (statistics, not synchronisation).
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum_nanos: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Counts one duration, bucketed by `bounds` (`N - 1` of them, increasing).
    pub(crate) fn record(&self, bounds: &[Duration], took: Duration) {
        let bucket = bounds.partition_point(|bound| *bound < took).min(N - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A snapshot, with `bounds` as the buckets' upper bounds.
    pub(crate) fn snapshot(&self, bounds: &[Duration]) -> LagHistogram {
        LagHistogram {
            buckets: bounds
                .iter()
                .map(|bound| Some(*bound))
                .chain([None])
                .zip(&self.buckets)
                .map(|(bound, count)| (bound, count.load(Relaxed)))
                .collect(),
            sum: Duration::from_nanos(self.sum_nanos.load(Relaxed)),
        }
    }
}

/// A namespace's latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub(crate) struct Latency(Histogram<{ LATENCY_BUCKETS.len() + 1 }>);

impl Latency {
    /// Counts one operation that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        self.0.record(&LATENCY_BUCKETS, took);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> LagHistogram {
        self.0.snapshot(&LATENCY_BUCKETS)
    }
}

impl Stats {
    /// Hits in both tiers.
    pub fn hits(&self) -> u64 {
        self.l1_hits + self.l2_hits
    }
}

/// Overall state of a node.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Everything works.
    Healthy,
    /// Serving, but L2 is unreachable or the event bus is down (L1 of event-driven namespaces is
    /// bypassed until the bus is back).
    Degraded,
    /// Not serving correctly: the node was shut down or its event listener stopped.
    Unhealthy,
}

impl HealthStatus {
    /// `"healthy"`, `"degraded"` or `"unhealthy"`, as the seed reported.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// The result of [`crate::EdgeCache::health`], with the seed's fields.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Overall state.
    pub status: HealthStatus,
    /// Whether L2 answered a ping (the seed's `redis_connected`).
    pub l2_connected: bool,
    /// Whether reads and writes skip L2 because its circuit breaker is open (see
    /// [`crate::EdgeCacheBuilder::l2_breaker`]).
    pub l2_breaker_open: bool,
    /// Whether the event subscription is up (the seed's `pubsub_active`).
    pub bus_connected: bool,
    /// Events (and connection changes) the bus has delivered to this node and the listener has
    /// not finished handling: the one in hand plus those queued behind it (the seed's
    /// `event_queue_size`). 0 unless the listener is behind. A bus whose subscription cannot
    /// tell what it holds ([`cache_core::Subscription::queue_gauge`]) contributes only the one in
    /// hand.
    pub event_queue_size: u64,
    /// Time since the last applied event.
    pub last_event_age: Option<Duration>,
    /// On a node that follows event logs: the time since the least recently confirmed
    /// event-driven namespace was last confirmed up to date by the log (the liveness check's
    /// age). Past the staleness bound that namespace's L1 is not served; `None` before the
    /// first confirmation or without a log.
    pub log_confirmed_age: Option<Duration>,
    /// Why the status is not healthy.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More threads than stripes, alive at once and one after another: no update is lost,
    /// whether a thread owns its stripe, shares the last one, or took over an exited thread's.
    #[test]
    fn lag_buckets_count_by_upper_bound_and_give_quantiles() {
        let counters = Counters::default();
        for micros in [50, 100, 101, 900, 4_000, 4_000, 2_000_000, 9_000_000] {
            counters.record_lag(Duration::from_micros(micros));
        }
        let histogram = counters.snapshot("n", "r", Vec::new()).propagation_lag;
        assert_eq!(histogram.count(), 8);
        assert_eq!(histogram.buckets.len(), LAG_BUCKETS.len() + 1);
        assert_eq!(histogram.buckets[0], (Some(Duration::from_micros(100)), 2));
        assert_eq!(histogram.buckets[1].1, 1);
        assert_eq!(histogram.buckets.last(), Some(&(None, 1)));
        assert_eq!(
            histogram.quantile_bound(0.5),
            Some(Duration::from_millis(1)),
            "the 4th of 8"
        );
        assert_eq!(histogram.quantile_bound(0.8), Some(Duration::from_secs(3)));
        assert_eq!(
            histogram.quantile_bound(1.0),
            None,
            "in the unbounded bucket"
        );
        assert_eq!(LagHistogram::default().quantile_bound(0.5), None);
    }

    #[test]
    fn counter_loses_no_update_across_owned_shared_and_reused_stripes() {
        let counter = Counter::default();
        let per_thread = 10_000_u64;
        let barrier = std::sync::Barrier::new(STRIPES * 2);
        std::thread::scope(|scope| {
            for _ in 0..STRIPES * 2 {
                scope.spawn(|| {
                    // All alive together, so some threads own no stripe.
                    barrier.wait();
                    for _ in 0..per_thread {
                        counter.add(1);
                    }
                });
            }
        });
        // Those threads have exited: these take over their stripes.
        std::thread::scope(|scope| {
            for _ in 0..STRIPES {
                scope.spawn(|| {
                    for _ in 0..per_thread {
                        counter.add(1);
                    }
                });
            }
        });
        assert_eq!(counter.get(), per_thread * STRIPES as u64 * 3);
        assert!(
            NEXT_STRIPE.load(Relaxed) <= STRIPES,
            "never more stripes than exist"
        );
    }
}
