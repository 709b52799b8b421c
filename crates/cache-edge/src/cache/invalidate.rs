//! The issuing side of invalidation: invalidations and notifications made on this node change
//! L2 once, here, are applied to this node's L1, then published to the fleet.

use std::future::Future;

use cache_core::{CacheKey, Codec, Event, EventType, LoggedChange, Result, Scope};
use serde_json::{json, Map, Value};

use crate::notify::Notification;

use super::pending::PendingKey;
use super::trace;
use super::{new_event_id, EdgeCache, Inner};

// For the links in the docs of the errors an invalidation reports, and of resource tags.
#[cfg(doc)]
use crate::options::SetOptions;
#[cfg(doc)]
use cache_core::ErrorKind;

impl<C: Codec> EdgeCache<C> {
    /// Drops every entry of `namespace` from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// [`ErrorKind::UnknownNamespace`]; [`ErrorKind::L2`] when L2 could not be changed: this
    /// node's L1 is still dropped, but nothing is announced (other nodes would otherwise count
    /// an invalidation as done and read back what L2 still holds), so issue it again;
    /// [`ErrorKind::Bus`] when L2 changed but the announcement failed. Where L2 keeps an event
    /// log ([`cache_core::L2Store::sequenced`]) the change was logged with it: nodes replay it
    /// from the log within the staleness bound, and a node whose bus is not on L2's route
    /// keeps the publication pending and retries it in the background (see
    /// [`crate::Stats::pending_publications`]); do not issue it again.
    pub async fn invalidate_namespace(&self, namespace: &str, reason: &str) -> Result<()> {
        trace::traced(
            "invalidate_namespace",
            namespace,
            self.invalidate_namespace_traced(namespace, reason),
        )
        .await
    }

    async fn invalidate_namespace_traced(&self, namespace: &str, reason: &str) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_name(namespace)?;
        let mut data = Map::new();
        data.insert("reason".into(), json!(reason));
        let mut event =
            inner.new_event(EventType::ManualInvalidation, ns.config.name.clone(), data);
        event.affected_namespaces = vec![ns.config.key_namespace.clone()];
        inner.counters.invalidations.add(1);
        inner.invalidate_namespaces_and_issue(&event).await
    }

    /// Drops exactly the entries of `namespace` written with the tag `resource` (see
    /// [`SetOptions::tag`]) from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`].
    pub async fn invalidate_resource(&self, namespace: &str, resource: &str) -> Result<()> {
        trace::traced(
            "invalidate_resource",
            namespace,
            self.invalidate_resource_traced(namespace, resource),
        )
        .await
    }

    async fn invalidate_resource_traced(&self, namespace: &str, resource: &str) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_name(namespace)?;
        let mut data = Map::new();
        data.insert("reason".into(), json!("resource"));
        let mut event = inner.new_event(EventType::ManualInvalidation, resource.to_owned(), data);
        event.affected_namespaces = vec![ns.config.key_namespace.clone()];
        event.scope = Scope::Resource;
        inner.counters.invalidations.add(1);
        let l2 = &inner.l2;
        let key_namespace = ns.config.key_namespace.as_str();
        let logged = || LoggedChange::InvalidateTag {
            key_namespace: key_namespace.to_owned(),
            tag: resource.to_owned(),
        };
        inner
            .change_l2_and_issue(&event, "invalidate_tag", logged, |announce| async move {
                match announce {
                    Some(event) => {
                        l2.invalidate_tag_and_announce(key_namespace, resource, event)
                            .await
                    }
                    None => l2.invalidate_tag(key_namespace, resource).await,
                }
                .map(drop)
            })
            .await
    }

    /// Drops one key from this node's L1 and from L2, and tells the fleet.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`].
    pub async fn invalidate_key(&self, key: &CacheKey) -> Result<()> {
        trace::traced(
            "invalidate_key",
            key.key_namespace(),
            self.invalidate_key_traced(key),
        )
        .await
    }

    async fn invalidate_key_traced(&self, key: &CacheKey) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (_, ns) = inner.ns_by_key(key)?;
        let mut event = inner.new_event(
            EventType::ManualInvalidation,
            ns.config.name.clone(),
            Map::new(),
        );
        event.scope = Scope::Keys(vec![key.as_str().to_owned()]);
        inner.counters.invalidations.add(1);
        let l2 = &inner.l2;
        let logged = || LoggedChange::Delete(key.clone());
        inner
            .change_l2_and_issue(&event, "delete", logged, |announce| async move {
                match announce {
                    Some(event) => l2.delete_and_announce(key, event).await,
                    None => l2.delete(key).await,
                }
                .map(drop)
            })
            .await
    }

    /// Drops exactly `keys` from this node's L1 and from L2, and tells the fleet, with one
    /// announcement per namespace the keys belong to (split further past the event bound,
    /// [`cache_core::Limits`], 1,024 keys by default) instead of one per key. The cost of an
    /// event is per event, not per key, at every node of the fleet: `cargo xtask bench` row 9
    /// measured about 10x more invalidations a second delivered to 1,000 subscribers with 16 keys
    /// per event. No keys: nothing to do.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`], for the first announcement that fails (the ones
    /// before it were made; issue the call again: invalidating twice is harmless).
    pub async fn invalidate_keys(&self, keys: &[CacheKey]) -> Result<()> {
        let namespace = keys.first().map_or("", CacheKey::key_namespace);
        trace::traced(
            "invalidate_keys",
            namespace,
            self.invalidate_keys_traced(keys),
        )
        .await
    }

    async fn invalidate_keys_traced(&self, keys: &[CacheKey]) -> Result<()> {
        let inner = &*self.inner;
        inner.check_open()?;
        // Grouped by namespace, in first-seen order, each group in chunks the event bound takes.
        let mut groups: Vec<(usize, Vec<CacheKey>)> = Vec::new();
        for key in keys {
            let (index, _) = inner.ns_by_key(key)?;
            match groups.iter_mut().find(|(i, _)| *i == index) {
                Some((_, group)) => group.push(key.clone()),
                None => groups.push((index, vec![key.clone()])),
            }
        }
        let per_event = inner.limits.max_keys_per_event().max(1);
        for (index, group) in groups {
            let ns = inner.ns_at(index);
            for chunk in group.chunks(per_event) {
                let mut event = inner.new_event(
                    EventType::ManualInvalidation,
                    ns.config.name.clone(),
                    Map::new(),
                );
                event.scope = Scope::Keys(chunk.iter().map(|k| k.as_str().to_owned()).collect());
                inner.counters.invalidations.add(1);
                let l2 = &inner.l2;
                let logged = || LoggedChange::DeleteMany(chunk.to_vec());
                inner
                    .change_l2_and_issue(&event, "delete", logged, |announce| async move {
                        l2.delete_many(chunk, announce).await.map(drop)
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Announces a marketplace change: invalidates the namespaces the routing table names for its
    /// event type in L2 (once, here), applies it to this node's L1, then publishes it. Returns the
    /// event as published.
    ///
    /// # Errors
    /// As [`EdgeCache::invalidate_namespace`]: on [`ErrorKind::L2`] nothing is announced (this
    /// node's L1 is still cleared); issue the notification again.
    pub async fn notify(&self, notification: Notification) -> Result<Event> {
        let event_type = notification.event_type().as_str();
        trace::traced("notify", event_type, self.notify_traced(notification)).await
    }

    async fn notify_traced(&self, notification: Notification) -> Result<Event> {
        let inner = &*self.inner;
        inner.check_open()?;
        let (event_type, resource_id, data) = notification.into_parts();
        let mut event = inner.new_event(event_type, resource_id, data);
        for name in inner.routing.namespaces(event_type) {
            let (_, ns) = inner.ns_by_name(name)?;
            event
                .affected_namespaces
                .push(ns.config.key_namespace.clone());
        }
        inner.counters.notifications.add(1);
        inner.invalidate_namespaces_and_issue(&event).await?;
        Ok(event)
    }
}

impl<C: Codec> Inner<C> {
    pub(super) fn new_event(
        &self,
        event_type: EventType,
        resource_id: String,
        mut data: Map<String, Value>,
    ) -> Event {
        data.entry("region").or_insert_with(|| json!(self.region));
        let mut event = Event::new(
            event_type,
            resource_id,
            self.node_id.clone(),
            new_event_id(&mut uuid::Uuid::encode_buffer()),
            self.clock.now().as_secs_f64(),
        );
        event.data = data;
        event
    }

    /// Invalidates the event's namespaces in L2 (once, here), applies the event to this node's
    /// L1 and publishes it.
    pub(super) async fn invalidate_namespaces_and_issue(&self, event: &Event) -> Result<()> {
        let namespaces = &event.affected_namespaces;
        if namespaces.is_empty() {
            return self.issue(event, Ok(())).await;
        }
        let logged = || LoggedChange::InvalidateNamespaces(namespaces.clone());
        self.change_l2_and_issue(event, "invalidate_namespaces", logged, |announce| {
            self.l2.invalidate_namespaces(namespaces, announce)
        })
        .await
    }

    /// Makes an L2 change for `event` (once, here), applies the event to this node's L1 and
    /// publishes it, in that order: no receiver can see the event before L2 changed. Where L2
    /// publishes for the bus, `change` is given the encoded event and the change and the publish
    /// are one step (one round trip on Redis); otherwise it is given `None` and the event goes
    /// out on the bus afterwards. Where L2 logs for a bus on another route, `logged` names the
    /// change, which L2 makes and logs in one step, and the message as logged is published
    /// (kept pending and retried if the bus fails). This node's L1 is cleared whatever
    /// happened; a failed change is neither announced (beyond what Redis's script did before
    /// failing to reply) nor counted as applied.
    async fn change_l2_and_issue<F, Fut>(
        &self,
        event: &Event,
        what: &str,
        logged: impl FnOnce() -> LoggedChange,
        change: F,
    ) -> Result<()>
    where
        F: FnOnce(Option<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        if self.publish_logged {
            return match self
                .l2
                .change_and_log(logged(), self.seal(event.encode()))
                .await
            {
                Ok(logged) => {
                    self.apply(event);
                    match logged.message {
                        Some(message) => {
                            let event_id = &event.event_id;
                            self.publish_logged(
                                message,
                                || PendingKey::Event(event_id.clone()),
                                event_id,
                            )
                            .await
                        }
                        None => Ok(()),
                    }
                }
                Err(e) => {
                    self.apply_to_l1(event);
                    Err(self.l2_failed(what, e))
                }
            };
        }
        if !self.announce_via_l2 {
            let l2 = change(None).await.map_err(|e| self.l2_failed(what, e));
            return self.issue(event, l2).await;
        }
        let result = match change(Some(self.seal(event.encode()))).await {
            Err(e) if self.published_late(&e) => Ok(()),
            other => other,
        };
        match result {
            Ok(()) => {
                self.apply(event);
                self.counters.events_published.add(1);
                Ok(())
            }
            Err(e) => {
                self.apply_to_l1(event);
                Err(self.l2_failed(what, e))
            }
        }
    }

    /// Applies an event this node issued, then publishes it; reports the first failure.
    ///
    /// After a failed L2 change the event is applied to this node's L1 only (see
    /// [`Inner::apply_to_l1`]) and not published: L2 may still hold what the event says is
    /// gone, and a node that applied it would read that back while counting the invalidation
    /// as done. The caller has the error and can issue it again.
    async fn issue(&self, event: &Event, l2_result: Result<()>) -> Result<()> {
        if let Err(e) = l2_result {
            self.apply_to_l1(event);
            return Err(e);
        }
        self.apply(event);
        self.publish(event).await
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        self.publish_encoded(self.seal(event.encode()), &event.event_id)
            .await
    }

    /// Publishes an encoded event (`event_id` names it in the log).
    pub(super) async fn publish_encoded(&self, payload: Vec<u8>, event_id: &str) -> Result<()> {
        match self.bus.publish(payload).await {
            Ok(()) => {
                self.counters.events_published.add(1);
                Ok(())
            }
            Err(e) => {
                self.counters.publish_errors.add(1);
                tracing::warn!(node_id = %self.node_id, event_id, error = %e, "publishing an event failed");
                Err(e)
            }
        }
    }
}
