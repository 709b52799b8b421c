//! What a node refuses: messages over its bounds (before they are decoded), and, with event
//! keys, what does not verify. Its own events are signed as they are encoded, others' are
//! verified before anything in them is trusted, and the replay guard refuses an event id heard
//! before or a timestamp outside the window.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cache_core::limits::EventLimit;
use cache_core::signing::{EventKeys, Rejection, Verdict};
use cache_core::{Codec, Error, ErrorKind, Event};

use super::{lock, Inner};

/// The most event ids remembered at once. Only verified events are remembered, so only the
/// fleet's own traffic fills it: 200,000 is over 3,000 events a second for a 60 s window. Past
/// it, the oldest half is forgotten (their timestamps still refuse them once the window ends).
const MAX_REMEMBERED: usize = 200_000;

/// Event ids heard within the window, with when each may be forgotten.
#[derive(Default)]
pub(crate) struct ReplayGuard {
    seen: Mutex<HashMap<Box<str>, u64>>,
    /// When the map was last swept of expired ids (nanoseconds since the epoch).
    swept_at: AtomicU64,
}

/// Why a message was refused, for the counters and the observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Limit(EventLimit),
    Signature(Rejection),
    Replayed,
    Stale,
}

impl<C: Codec> Inner<C> {
    /// Checks a raw message against the node's bounds (size, nesting) before anything else.
    pub(super) fn check_limits(&self, message: &[u8]) -> Result<(), Refusal> {
        self.limits.check_message(message).map_err(|limit| {
            self.refuse(Refusal::Limit(limit), message.len());
            Refusal::Limit(limit)
        })
    }

    /// Checks a decoded event's lists (namespaces, keys) against the node's bounds.
    pub(super) fn check_event_limits(&self, event: &Event) -> Result<(), Refusal> {
        self.limits.check_event(event).map_err(|limit| {
            self.refuse(Refusal::Limit(limit), 0);
            Refusal::Limit(limit)
        })
    }

    /// `event` (encoded, ending in its closing brace) as this node publishes it: signed when
    /// the node holds keys.
    pub(super) fn seal(&self, event: Vec<u8>) -> Vec<u8> {
        match &self.keys {
            Some(keys) => keys.sign(&event),
            None => event,
        }
    }

    /// Checks the signature of a message heard on the bus or read from a log; `Err` when it
    /// must not be used (counted and reported here).
    pub(super) fn check_signature(&self, message: &[u8]) -> Result<(), Refusal> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        match keys.verify(message) {
            Ok(Verdict::Signed { .. } | Verdict::Unsigned) => Ok(()),
            Err(rejection) => {
                self.refuse(Refusal::Signature(rejection), message.len());
                Err(Refusal::Signature(rejection))
            }
        }
    }

    /// The replay guard, for an event heard on the bus whose signature checked out: refuses a
    /// timestamp farther than the window from this node's clock, and an event id heard before
    /// within it. Events replayed from a log are not checked (the log is read from the store,
    /// not from the channel, and may be older than the window) but are remembered, so a late
    /// copy on the bus is refused.
    pub(super) fn check_fresh(&self, event: &Event) -> Result<(), Refusal> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let window = keys.replay_window();
        let now = self.clock.now().as_nanos();
        let issued = seconds_to_nanos(event.timestamp);
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        if issued.abs_diff(now) > window_nanos {
            self.refuse(Refusal::Stale, 0);
            return Err(Refusal::Stale);
        }
        if !self.remember(&event.event_id, now, window) {
            self.refuse(Refusal::Replayed, 0);
            return Err(Refusal::Replayed);
        }
        Ok(())
    }

    /// Remembers an event id (one replayed from a log, say) so that a copy heard later on the
    /// bus is refused; `false` when it was already remembered.
    pub(super) fn remember(&self, event_id: &str, now: u64, window: Duration) -> bool {
        let guard = &self.replay_guard;
        // Kept twice the window: an id must outlive the time its timestamp still passes, on
        // either side of this node's clock.
        let forget_at = now.saturating_add(2 * u64::try_from(window.as_nanos()).unwrap_or(0));
        let mut seen = lock(&guard.seen);
        let swept_at = guard.swept_at.load(Relaxed);
        if now.saturating_sub(swept_at) > u64::try_from(window.as_nanos()).unwrap_or(0) / 4
            || seen.len() >= MAX_REMEMBERED
        {
            seen.retain(|_, forget| *forget > now);
            if seen.len() >= MAX_REMEMBERED {
                // Only the fleet's own signed traffic gets here: forget the older half.
                let mut ages: Vec<u64> = seen.values().copied().collect();
                let middle = ages.len() / 2;
                let (_, cutoff, _) = ages.select_nth_unstable(middle);
                let cutoff = *cutoff;
                seen.retain(|_, forget| *forget > cutoff);
            }
            guard.swept_at.store(now, Relaxed);
        }
        seen.insert(event_id.into(), forget_at).is_none()
    }

    /// Whether a refusal may be logged now: at most one a second per node, so a flood costs
    /// counters, not log volume.
    pub(super) fn may_log_refusal(&self) -> bool {
        let now = self.clock.now().as_nanos();
        let last = self.refusal_logged_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1_000_000_000
            && self
                .refusal_logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Counts a refusal, logs it (at most once a second per node, with how many were refused
    /// meanwhile) and tells the observer.
    fn refuse(&self, refusal: Refusal, len: usize) {
        let counter = match refusal {
            Refusal::Limit(EventLimit::Bytes) => &self.counters.rejected_oversized,
            Refusal::Limit(EventLimit::Depth) => &self.counters.rejected_too_deep,
            Refusal::Limit(EventLimit::Namespaces) => &self.counters.rejected_too_many_namespaces,
            Refusal::Limit(EventLimit::Keys) => &self.counters.rejected_too_many_keys,
            Refusal::Signature(Rejection::Unsigned) => &self.counters.rejected_unsigned,
            Refusal::Signature(Rejection::Malformed) => &self.counters.rejected_malformed_signature,
            Refusal::Signature(Rejection::UnknownKey) => &self.counters.rejected_unknown_key,
            Refusal::Signature(Rejection::BadMac) => &self.counters.rejected_bad_mac,
            Refusal::Replayed => &self.counters.rejected_replayed,
            Refusal::Stale => &self.counters.rejected_stale,
        };
        counter.add(1);
        let reason = match refusal {
            Refusal::Limit(limit) => limit.as_str(),
            Refusal::Signature(rejection) => rejection.as_str(),
            Refusal::Replayed => "event id heard before",
            Refusal::Stale => "timestamp outside the replay window",
        };
        if self.may_log_refusal() {
            tracing::warn!(node_id = %self.node_id, reason, len, "refused an event (further refusals within a second are counted, not logged)");
        }
        let kind = match refusal {
            Refusal::Limit(_) => ErrorKind::MalformedEvent,
            _ => ErrorKind::Unauthenticated,
        };
        let error = Error::new(kind, format!("refused: {reason}"));
        self.observer.on_event_rejected(&error);
    }
}

/// An event's timestamp (seconds since the epoch, as the seed writes it) in nanoseconds;
/// nonsense (negative, NaN, huge) becomes 0, which no window admits.
fn seconds_to_nanos(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 && seconds < 1e10 {
        (seconds * 1e9) as u64
    } else {
        0
    }
}

/// The keys a node holds, for the builder.
pub(crate) type Keys = Option<EventKeys>;
