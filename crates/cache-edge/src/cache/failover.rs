//! After L2 moved to another server (a replica promoted by a failover, see
//! [`cache_core::L2Store::server_epoch`]): replication is asynchronous, so the new primary may
//! lack writes and invalidations the old one acknowledged, and what it holds of a key may be
//! older than a value the fleet was told about. Until this node has invalidated its
//! event-driven namespaces there (announced and logged like any invalidation, so every node
//! drops its L1 and forgets the generations it remembered), it reads nothing from L2: calls
//! are skipped as if the breaker were open. The liveness task does the invalidation; catch-ups
//! do not vouch for L1 before it. A move is a Sentinel switch, or another server found behind
//! the same address ([`cache_core::L2Store::check_server`], asked at every liveness check).
//!
//! The new server's logs may end below what this node applied, so it numbers its next changes
//! with numbers the node took already: those arriving before the invalidation are taken for
//! duplicates and ignored, which the invalidation covers (it drops L1, and makes what they
//! replaced in L2 unreachable); the catch-up that follows it in the same liveness round sees a
//! head below what the node saw and follows that log from there (`drops_regressed`), or a head
//! already past it, whose numbers above the node's are new changes it applies as they come.

use std::sync::atomic::Ordering::SeqCst;

use cache_core::{Codec, Error, ErrorKind, EventType, Result};
use serde_json::{json, Map};

use super::Inner;

impl<C: Codec> Inner<C> {
    /// Whether L2 moved to another server since this node last made it safe to read; then the
    /// liveness task is woken to do so.
    pub(super) fn l2_moved(&self) -> bool {
        if !self.sequenced || self.l2.server_epoch() == self.server_seen.load(SeqCst) {
            return false;
        }
        self.freshness.wake.notify_one();
        true
    }

    /// The error a catch-up returns while [`Inner::l2_moved`].
    pub(super) fn moved_error(&self) -> Error {
        Error::new(
            ErrorKind::L2,
            "L2 moved to another server that may lack acknowledged changes; its event-driven \
             namespaces are invalidated there before it is read",
        )
    }

    /// Invalidates every event-driven namespace on the server L2 moved to, if it moved, and
    /// then lets L2 be read again.
    ///
    /// # Errors
    /// The invalidation's failure (tried again at the next liveness check).
    pub(super) async fn recover_after_failover(&self) -> Result<()> {
        let epoch = self.l2.server_epoch();
        if !self.sequenced || epoch == self.server_seen.load(SeqCst) {
            return Ok(());
        }
        let namespaces: Vec<String> = self
            .namespaces
            .iter()
            .filter(|ns| ns.config.event_driven)
            .map(|ns| ns.config.key_namespace.clone())
            .collect();
        let mut data = Map::new();
        data.insert("reason".into(), json!("failover"));
        let mut event = self.new_event(EventType::ManualInvalidation, "failover".to_owned(), data);
        event.affected_namespaces = namespaces;
        self.invalidate_namespaces_and_issue(&event).await?;
        self.server_seen.store(epoch, SeqCst);
        self.counters.failovers_recovered.add(1);
        tracing::warn!(node_id = %self.node_id, "L2 moved to another server: event-driven namespaces invalidated there; reading it again");
        Ok(())
    }
}
