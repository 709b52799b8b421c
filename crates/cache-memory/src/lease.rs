//! Fill leases of the in-process L2 (see [`cache_core::L2Store::lease`]): one holder per key,
//! waiters woken by the release. Leases run on tokio's clock, like the waits on them, so a
//! paused test clock moves both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::{Lease, LeaseWait};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Leases held, by key.
#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<String, Held>>,
}

struct Held {
    token: String,
    until: Instant,
    /// Woken when this lease is released.
    released: Arc<Notify>,
}

impl Leases {
    pub(crate) fn lease(&self, key: &str, token: &str, hold: Duration) -> Lease {
        let now = Instant::now();
        let mut held = self.lock();
        if let Some(current) = held.get(key) {
            if current.until > now {
                // The cursor is the holder's token: the wait ends once another holds, or none.
                return Lease::Held(LeaseWait::new(current.until - now, current.token.clone()));
            }
        }
        // A lease whose holder never released it ended by itself; its waiters wake at its
        // end on their own.
        held.insert(
            key.to_owned(),
            Held {
                token: token.to_owned(),
                until: now + hold,
                released: Arc::new(Notify::new()),
            },
        );
        Lease::Acquired
    }

    pub(crate) async fn wait(&self, key: &str, wait: &LeaseWait) -> bool {
        let released = {
            let held = self.lock();
            match held.get(key) {
                Some(current) if current.token == wait.cursor => Arc::clone(&current.released),
                // Released (or taken over) since it was found held.
                _ => return true,
            }
        };
        let notified = released.notified();
        tokio::pin!(notified);
        // Registered before the state is looked at again, so a release in between still
        // wakes this wait.
        notified.as_mut().enable();
        if self
            .lock()
            .get(key)
            .is_none_or(|current| current.token != wait.cursor)
        {
            return true;
        }
        tokio::time::timeout(wait.remaining, notified).await.is_ok()
    }

    pub(crate) fn release(&self, key: &str, token: &str) {
        let mut held = self.lock();
        if held.get(key).is_some_and(|current| current.token == token) {
            if let Some(current) = held.remove(key) {
                current.released.notify_waiters();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_holder_its_waiters_woken_by_the_release_and_an_abandoned_lease_ends() {
        let leases = Arc::new(Leases::default());
        let hold = Duration::from_secs(2);
        assert_eq!(leases.lease("k", "a", hold), Lease::Acquired);
        let Lease::Held(wait) = leases.lease("k", "b", hold) else {
            panic!("a second caller must find the lease held")
        };
        assert_eq!(wait.remaining, hold);
        let waiter = {
            let leases = Arc::clone(&leases);
            let wait = wait.clone();
            tokio::spawn(async move { leases.wait("k", &wait).await })
        };
        tokio::task::yield_now().await;
        // Only the holder's token releases it.
        leases.release("k", "b");
        assert!(!waiter.is_finished());
        leases.release("k", "a");
        assert!(waiter.await.unwrap(), "the release wakes the waiter");
        // A wait that starts after the release ends at once.
        assert!(leases.wait("k", &wait).await);

        // Abandoned: the wait runs out with the lease, and the key can be taken again.
        assert_eq!(leases.lease("k", "c", hold), Lease::Acquired);
        let Lease::Held(wait) = leases.lease("k", "d", hold) else {
            panic!("held")
        };
        assert!(!leases.wait("k", &wait).await, "nobody released it");
        assert_eq!(leases.lease("k", "d", hold), Lease::Acquired);
    }
}
