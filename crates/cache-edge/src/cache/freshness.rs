//! Staying fresh through faults: each event-driven namespace follows its log in L2 (see
//! [`cache_core::log`]). Positions heard on the bus advance a [`LogCursor`]; a gap, a reconnect
//! or the liveness check makes the node read back exactly what it missed (a *catch-up*); and L1
//! is served only until `serve_until`, which each catch-up that found the node up to date moves
//! to its start plus the staleness bound. A fault the node cannot see (a deaf subscription, a
//! lost message) is therefore repaired by the next liveness check, and a fault it cannot repair
//! (Redis unreachable) stops L1 from being served once the bound runs out: no read returns a
//! value older than a change acknowledged more than the bound before it.

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{
    Codec, Event, HeadCheck, LogCursor, LogPosition, Observed, OutagePolicy, Result, Timestamp,
};
use tokio::sync::{watch, Notify};

use super::{lock, Inner, NsState};

/// How many log entries one read of a catch-up asks for.
const CATCH_UP_PAGE: usize = 1_000;

/// The log-following state of one event-driven namespace on a sequenced node.
pub(super) struct NsFreshness {
    /// What was applied of the namespace's log.
    cursor: Mutex<LogCursor>,
    /// L1 is served only while the (coarse) clock reads before this, in nanoseconds since the
    /// epoch; 0 while the namespace is in outage.
    pub(super) serve_until: AtomicU64,
    /// When the node was last sure it had applied every change of the namespace (0: never).
    sure_at: AtomicU64,
    /// How long after `sure_at` L1 may still be served: the node's bound, or the policy's
    /// `max_age` when longer.
    window: Duration,
    /// Whether a lost subscription alone sends reads past L1 (the `Bypass` policy).
    pub(super) bypass_when_down: bool,
    /// Under [`OutagePolicy::ShortenedTtl`], how long an entry filled while unsure may live.
    short_ttl: Option<Duration>,
    /// Whether the namespace is in its shortened-TTL mode: its L1 was emptied when the bound
    /// ran out, and what it holds now was filled with `short_ttl` at most. Left at the next
    /// confirmation.
    pub(super) short_mode: AtomicBool,
    /// Time L1 was found out of use at the liveness task's samples, in nanoseconds.
    outage_nanos: AtomicU64,
    /// When the liveness task last sampled (0: not yet).
    sampled_at: AtomicU64,
}

impl NsFreshness {
    pub(super) fn new(policy: OutagePolicy, bound: Duration) -> Self {
        let (window, bypass_when_down, short_ttl) = match policy {
            OutagePolicy::ServeStale { max_age } => (max_age.max(bound), false, None),
            OutagePolicy::ShortenedTtl { ttl } => (bound, false, Some(ttl)),
            _ => (bound, true, None),
        };
        Self {
            cursor: Mutex::new(LogCursor::default()),
            serve_until: AtomicU64::new(0),
            sure_at: AtomicU64::new(0),
            window,
            bypass_when_down,
            short_ttl,
            short_mode: AtomicBool::new(false),
            outage_nanos: AtomicU64::new(0),
            sampled_at: AtomicU64::new(0),
        }
    }

    /// The position up to which everything was applied: (epoch, number), if an epoch is known.
    pub(super) fn applied(&self) -> Option<(u64, u64)> {
        let cursor = lock(&self.cursor);
        cursor.epoch().map(|epoch| (epoch, cursor.applied()))
    }

    /// How long an L1 entry of this namespace filled now may live, given the TTL it would
    /// have: shortened while in the shortened-TTL mode.
    pub(super) fn l1_ttl(&self, ttl: Duration) -> Duration {
        match self.short_ttl {
            Some(short) if self.short_mode.load(Relaxed) => ttl.min(short),
            _ => ttl,
        }
    }

    /// Time L1 was out of use, as sampled.
    pub(super) fn outage(&self) -> Duration {
        Duration::from_nanos(self.outage_nanos.load(Relaxed))
    }

    /// When the node was last sure it had applied every change, if ever.
    pub(super) fn sure_at(&self) -> Option<Timestamp> {
        let nanos = self.sure_at.load(Relaxed);
        (nanos != 0).then(|| Timestamp::from_nanos(nanos))
    }
}

/// The node-wide side of freshness: the bound, the liveness interval and the catch-up signal.
pub(super) struct Freshness {
    pub(super) bound: Duration,
    pub(super) liveness: Duration,
    /// Wakes the liveness task for an immediate catch-up.
    pub(super) wake: Notify,
    /// Resubscribes so far; each leaves the bus marked down until a catch-up that started after
    /// it has replayed what was published while the subscription was away.
    pub(super) resubscribes: AtomicU64,
    /// The resubscribes covered by a complete catch-up.
    pub(super) replayed: AtomicU64,
    /// Whether the subscription is up (its last state was `Connected` or `Resubscribed`).
    pub(super) subscribed: AtomicBool,
    /// Serialises changes of the connection state with the end of a replay.
    pub(super) transitions: Mutex<()>,
    /// Positions heard on the bus (not replayed): how the liveness task tells a deaf
    /// subscription from a quiet one.
    heard: AtomicU64,
    /// Asks the listener to have its subscription resubscribe (it looks deaf).
    resubscribe: Notify,
}

impl Freshness {
    pub(super) fn new(bound: Duration, liveness: Duration) -> Self {
        Self {
            bound,
            liveness,
            wake: Notify::new(),
            resubscribes: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            subscribed: AtomicBool::new(true),
            transitions: Mutex::new(()),
            heard: AtomicU64::new(0),
            resubscribe: Notify::new(),
        }
    }
}

impl<C: Codec> Inner<C> {
    /// The freshness state of `ns`, when this node follows its log.
    fn fresh<'a>(&self, ns: &'a NsState) -> Option<&'a NsFreshness> {
        ns.fresh.as_ref()
    }

    /// Whether `e`, returned by a sequenced L2 for a change it was to announce, says only that
    /// the publication failed: the change and its log entry landed, and every node replays the
    /// event from the log within the staleness bound, so the change counts as made and
    /// announced. Counted and logged here.
    pub(super) fn published_late(&self, e: &cache_core::Error) -> bool {
        if !self.sequenced || e.kind() != cache_core::ErrorKind::Bus {
            return false;
        }
        self.counters.publish_errors.add(1);
        tracing::warn!(node_id = %self.node_id, error = %e, "an announced change was made and logged but not published; nodes replay it from the log");
        true
    }

    /// Resolves when the liveness task finds the subscription deaf (see [`run`]): the listener
    /// then asks it to resubscribe.
    pub(crate) async fn resubscribe_requested(&self) {
        self.freshness.resubscribe.notified().await;
    }

    /// Records the positions carried by an event this node heard on the bus (its own
    /// included). Returns whether every position was already applied (a duplicate delivery).
    pub(super) fn observe_heard(&self, positions: &[LogPosition]) -> bool {
        if !positions.is_empty() {
            self.freshness.heard.fetch_add(1, Relaxed);
        }
        self.observe_positions(positions)
    }

    /// Records the positions of an applied event. Returns whether every position was already
    /// applied.
    fn observe_positions(&self, positions: &[LogPosition]) -> bool {
        let mut duplicate = !positions.is_empty();
        for position in positions {
            let Some(ns) = self.ns_by_key_namespace(&position.key_namespace) else {
                continue;
            };
            let Some(fresh) = self.fresh(ns) else {
                continue;
            };
            let observed = lock(&fresh.cursor).observe(position.epoch, position.seq);
            match observed {
                Observed::Duplicate => continue,
                Observed::InOrder => {}
                Observed::Gap { from, to } => {
                    self.counters.gaps_detected.add(1);
                    tracing::debug!(node_id = %self.node_id, namespace = %ns.config.name, from, to, "gap in the event log; catching up");
                    if fresh.bypass_when_down {
                        fresh.serve_until.store(0, SeqCst);
                    }
                    self.freshness.wake.notify_one();
                }
                Observed::NewEpoch { .. } => self.drop_namespace(ns, "new_epoch"),
                _ => self.drop_namespace(ns, "overflow"),
            }
            duplicate = false;
        }
        duplicate
    }

    /// Drops `ns`'s L1: its log cannot tell what was missed.
    fn drop_namespace(&self, ns: &NsState, reason: &'static str) {
        self.change_l1(ns, |l1| {
            l1.clear();
        });
        match reason {
            "trimmed" | "overflow" => self.counters.drops_trimmed.add(1),
            "regressed" => self.counters.drops_regressed.add(1),
            _ => self.counters.drops_new_epoch.add(1),
        }
        tracing::warn!(node_id = %self.node_id, namespace = %ns.config.name, reason, "event log cannot replay what was missed; namespace L1 dropped");
    }

    /// Adds the time since the last sample to each followed namespace whose L1 is out of use
    /// now (the liveness task samples before each check).
    fn sample_outage(&self) {
        let now = self.clock.now();
        for ns in &self.namespaces {
            let Some(fresh) = self.fresh(ns) else {
                continue;
            };
            self.shorten_if_unsure(ns, fresh);
            let last = fresh.sampled_at.swap(now.as_nanos(), Relaxed);
            if last != 0 && ns.l1.is_some() && !self.l1_trusted(ns, self.clock.expiry_now()) {
                fresh
                    .outage_nanos
                    .fetch_add(now.as_nanos().saturating_sub(last), Relaxed);
            }
        }
    }

    /// Enters the shortened-TTL mode of a namespace whose policy has one, once its bound has
    /// run out: its L1 is emptied (what it held may be older than changes the node missed) and
    /// refilled with short-lived entries. Until the mode is entered, L1 is not served.
    fn shorten_if_unsure(&self, ns: &NsState, fresh: &NsFreshness) {
        if fresh.short_ttl.is_none() || fresh.short_mode.load(SeqCst) {
            return;
        }
        if self.clock.expiry_now().as_nanos() < fresh.serve_until.load(SeqCst) {
            return;
        }
        let _cursor = lock(&fresh.cursor);
        self.change_l1(ns, |l1| {
            l1.clear();
        });
        fresh.short_mode.store(true, SeqCst);
        self.counters.shortened_ttl_modes.add(1);
        tracing::warn!(node_id = %self.node_id, namespace = %ns.config.name, "the event log has not confirmed this namespace within the bound; L1 emptied and refilled with short-lived entries");
    }

    /// Sets every followed namespace's cursor at its log's head, at start: L1 is empty, so
    /// nothing before the head can be served stale.
    ///
    /// # Errors
    /// The first L2 failure; the namespaces not read stay unknown (L1 not served) until the
    /// liveness task reads them.
    pub(super) async fn start_following(&self) -> Result<()> {
        let started = self.clock.now();
        for ns in &self.namespaces {
            let Some(fresh) = self.fresh(ns) else {
                continue;
            };
            let read = self
                .l2
                .read_log(&ns.config.key_namespace, u64::MAX, 1)
                .await
                .map_err(|e| self.l2_failed("read_log", e))?;
            lock(&fresh.cursor).restart(read.epoch, read.head);
            fresh.sure_at.store(started.as_nanos(), SeqCst);
            let until = started.saturating_add(fresh.window).as_nanos();
            fresh.serve_until.store(until, SeqCst);
        }
        Ok(())
    }

    /// Called after a catch-up that started when `resubscribes` resubscribes had happened:
    /// if none happened since and the subscription is up, what was published while it was away
    /// has now been replayed, and L1 is used again.
    pub(super) fn replayed_through(&self, resubscribes: u64) {
        let freshness = &self.freshness;
        let _transition = lock(&freshness.transitions);
        if resubscribes == 0
            || freshness.replayed.load(SeqCst) >= resubscribes
            || freshness.resubscribes.load(SeqCst) != resubscribes
            || !freshness.subscribed.load(SeqCst)
        {
            return;
        }
        freshness.replayed.store(resubscribes, SeqCst);
        self.bus_down.store(false, SeqCst);
        self.feed_complete(true);
        tracing::info!(node_id = %self.node_id, "missed events replayed from the log; L1 of event-driven namespaces in use again");
    }

    /// Reads every followed namespace's log and applies what this node has not: a replay when
    /// something was missed, a confirmation otherwise. Each namespace found up to date as of
    /// the catch-up's start may serve L1 until that start plus its window.
    ///
    /// # Errors
    /// The first L2 failure; namespaces read before it keep their progress.
    pub(super) async fn catch_up(&self) -> Result<()> {
        let started = self.clock.now();
        self.counters.log_checks.add(1);
        if self.l2_moved() {
            return Err(self.moved_error());
        }
        for ns in &self.namespaces {
            let Some(fresh) = self.fresh(ns) else {
                continue;
            };
            let head = self.catch_up_namespace(ns, fresh).await?;
            // Under the cursor's lock, so a gap noticed meanwhile (which closes L1 under the
            // same lock) is not reopened here. Numbers above the head read were given out
            // after this catch-up started: missing them does not stop it vouching.
            let cursor = lock(&fresh.cursor);
            // Not if L2 moved meanwhile: what was read may come from the new server, which
            // vouches for nothing until it is made safe.
            if cursor.missing().is_none_or(|(from, _)| from > head) && !self.l2_moved() {
                fresh.sure_at.fetch_max(started.as_nanos(), SeqCst);
                let until = started.saturating_add(fresh.window).as_nanos();
                fresh.serve_until.store(until, SeqCst);
                fresh.short_mode.store(false, SeqCst);
            }
        }
        Ok(())
    }

    /// Replays what `ns`'s cursor lacks up to the log's head; returns the last head read.
    async fn catch_up_namespace(&self, ns: &NsState, fresh: &NsFreshness) -> Result<u64> {
        let name = &ns.config.key_namespace;
        loop {
            let (after, seen_before, epoch_before) = {
                let cursor = lock(&fresh.cursor);
                (cursor.applied(), cursor.highest(), cursor.epoch())
            };
            let read = self
                .l2
                .read_log(name, after, CATCH_UP_PAGE)
                .await
                .map_err(|e| self.l2_failed("read_log", e))?;
            let check = {
                let cursor = lock(&fresh.cursor);
                // Numbers seen before the read prove a regression only within the epoch the
                // cursor still follows: one that moved to a new epoch meanwhile (a reset heard
                // on the bus) starts from nothing.
                let seen_before = if cursor.epoch() == epoch_before {
                    seen_before
                } else {
                    0
                };
                cursor.check_head(read.epoch, read.head, read.first, seen_before)
            };
            match check {
                HeadCheck::UpToDate => return Ok(read.head),
                HeadCheck::Behind { .. } if !read.entries.is_empty() => {
                    for (seq, message) in &read.entries {
                        self.replay(ns, message);
                        lock(&fresh.cursor).observe(read.epoch, *seq);
                    }
                }
                HeadCheck::Behind { .. } => {
                    // The head is ahead but the entries after `after` are gone: trimmed in
                    // between the two reads of the script, or never logged.
                    self.restart_namespace(ns, fresh, read.epoch, read.head, "trimmed");
                    return Ok(read.head);
                }
                HeadCheck::Trimmed => {
                    self.restart_namespace(ns, fresh, read.epoch, read.head, "trimmed");
                    return Ok(read.head);
                }
                HeadCheck::Regressed => {
                    self.restart_namespace(ns, fresh, read.epoch, read.head, "regressed");
                    return Ok(read.head);
                }
                _ => {
                    // Another epoch. A cursor that knew none (a node that could not read the
                    // log at start) has nothing in L1 to distrust only if it never served; drop
                    // either way, it is cheap at start.
                    self.restart_namespace(ns, fresh, read.epoch, read.head, "new_epoch");
                    return Ok(read.head);
                }
            }
        }
    }

    /// Drops `ns`'s L1 and follows its log from `head` of `epoch`.
    fn restart_namespace(
        &self,
        ns: &NsState,
        fresh: &NsFreshness,
        epoch: u64,
        head: u64,
        reason: &'static str,
    ) {
        let mut cursor = lock(&fresh.cursor);
        // Dropped under the cursor's lock: positions heard meanwhile wait, then count from the
        // new start.
        self.drop_namespace(ns, reason);
        cursor.restart(epoch, head);
    }

    /// Applies one entry read back from the log.
    fn replay(&self, ns: &NsState, message: &[u8]) {
        if message.starts_with(&self.own_prefix) {
            // This node applied its own change when it made it.
            return;
        }
        if self.check_limits(message).is_err() || self.check_signature(message).is_err() {
            // Whatever it invalidated cannot be known: the namespace's L1 goes.
            tracing::warn!(node_id = %self.node_id, "a logged event is over a bound or does not verify; dropping its namespace");
            self.change_l1(ns, |l1| {
                l1.clear();
            });
            return;
        }
        match Event::decode(message) {
            Ok(event) if self.check_event_limits(&event).is_err() => {
                self.change_l1(ns, |l1| {
                    l1.clear();
                });
            }
            Ok(event) => {
                if let Some(keys) = &self.keys {
                    // A copy heard later on the bus is a replay.
                    self.remember(
                        &event.event_id,
                        self.clock.now().as_nanos(),
                        keys.replay_window(),
                    );
                }
                self.counters.events_replayed.add(1);
                // Positions of other namespaces the event touched advance their cursors too.
                self.observe_positions(&event.positions);
                self.apply(&event);
            }
            Err(e) => {
                self.counters.events_rejected.add(1);
                tracing::warn!(node_id = %self.node_id, error = %e, "a logged event does not decode; dropping its namespace");
                self.change_l1(ns, |l1| {
                    l1.clear();
                });
            }
        }
    }
}

/// The liveness task of a sequenced node: a catch-up every `liveness` interval, and at once
/// when woken (a gap, a resubscribe). A failed catch-up is tried again after a tenth of the
/// interval; L1 of the namespaces it could not confirm stops being served when their window
/// runs out.
///
/// It also tells a deaf subscription (open, but delivering nothing) from a quiet one: when two
/// checks in a row replay events while the bus delivered no position at all since the check
/// before, with the subscription reported up, the subscription is asked to resubscribe
/// (`deaf_subscriptions`). One such check alone can be an event still in flight.
pub(crate) async fn run<C: Codec>(inner: Arc<Inner<C>>, mut shutdown: watch::Receiver<bool>) {
    let liveness = inner.freshness.liveness;
    let mut wait = liveness;
    let mut heard_at_last_check = inner.freshness.heard.load(Relaxed);
    let mut suspect = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = inner.freshness.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        inner.sample_outage();
        if let Err(e) = inner.l2.check_server().await {
            tracing::debug!(node_id = %inner.node_id, error = %e, "could not ask L2 which server answers");
        }
        if let Err(e) = inner.recover_after_failover().await {
            tracing::warn!(node_id = %inner.node_id, error = %e, "could not invalidate the event-driven namespaces on the server L2 moved to; L2 stays unread");
            // No catch-up (it refuses while L2 moved) and no wake-up before the retry: every
            // skipped L2 call wakes this task, and an unreachable server would otherwise be
            // asked again at once, without end.
            inner.counters.log_check_failures.add(1);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(liveness / 10) => {}
            }
            continue;
        }
        // A resubscribe after this read is not covered by this catch-up.
        let resubscribes = inner.freshness.resubscribes.load(SeqCst);
        let replayed_before = inner.counters.events_replayed.get();
        let heard = inner.freshness.heard.load(Relaxed);
        let settled = inner.freshness.replayed.load(SeqCst) == resubscribes
            && inner.freshness.subscribed.load(SeqCst);
        match inner.catch_up().await {
            Ok(()) => {
                wait = liveness;
                inner.replayed_through(resubscribes);
                let replayed = inner.counters.events_replayed.get() > replayed_before;
                let deafness = settled && replayed && heard == heard_at_last_check;
                if deafness && suspect {
                    inner.counters.deaf_subscriptions.add(1);
                    tracing::warn!(node_id = %inner.node_id, "the subscription delivered nothing for two liveness intervals while the event log moved; resubscribing");
                    inner.freshness.resubscribe.notify_one();
                    suspect = false;
                } else {
                    suspect = deafness;
                }
                heard_at_last_check = heard;
            }
            Err(e) => {
                inner.counters.log_check_failures.add(1);
                tracing::warn!(node_id = %inner.node_id, error = %e, "could not read the event log; L1 of event-driven namespaces is served until the staleness bound runs out");
                wait = liveness / 10;
            }
        }
    }
}
