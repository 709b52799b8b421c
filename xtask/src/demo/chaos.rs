//! `--chaos`: faults injected while the workload runs, so the freshness audit also judges what
//! nodes serve across lost subscriptions and failed commands.
//!
//! On the private redis-server, every [`EVERY`] the server drops its clients: the subscribers
//! (`CLIENT KILL TYPE pubsub`, events published until they resubscribe are lost to them) and the
//! command connections (`CLIENT KILL TYPE normal`, commands in flight fail) by turns. On the
//! embedded backends, the bus and then L2 are taken away for [`OUTAGE`] by turns. The workload
//! reports the failed calls as errors; only stale reads fail the run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cache_memory::{MemoryBus, MemoryL2};
use redis::aio::MultiplexedConnection;

use super::workload::World;

/// How often a fault is injected.
pub(super) const EVERY: Duration = Duration::from_millis(250);

/// How long an embedded outage lasts.
const OUTAGE: Duration = Duration::from_millis(20);

/// Where the faults go.
pub(super) enum Target {
    /// The private redis-server, through a connection of the chaos task's own (which
    /// `CLIENT KILL` skips).
    Redis(MultiplexedConnection),
    /// The process-wide embedded bus and L2 the nodes share.
    Embedded,
}

/// What was injected, for the report.
#[derive(Debug, Default)]
pub(super) struct Injected {
    /// Subscriber drops: Redis subscriber connections killed, or embedded bus outages.
    pub(super) bus: u64,
    /// Command-connection drops: Redis clients killed, or embedded L2 outages.
    pub(super) l2: u64,
    /// Redis connections the server reported killed.
    pub(super) clients_killed: u64,
    /// `CLIENT KILL` calls that failed (the run goes on).
    pub(super) failed: u64,
}

impl Injected {
    /// One line for the report.
    pub(super) fn describe(&self, target_is_redis: bool) -> String {
        if target_is_redis {
            format!(
                "chaos: the server dropped its subscribers {} times and its command connections \
                 {} times ({} connections in all{}); calls failing meanwhile is expected",
                self.bus,
                self.l2,
                self.clients_killed,
                if self.failed > 0 {
                    format!(", {} CLIENT KILL calls failed", self.failed)
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "chaos: the bus went away {} times and L2 {} times, {} ms each; calls failing \
                 meanwhile is expected",
                self.bus,
                self.l2,
                OUTAGE.as_millis()
            )
        }
    }
}

/// Injects faults every [`EVERY`] until the workload stops; what it did.
pub(super) async fn chaos_loop(world: Arc<World>, mut target: Target) -> Injected {
    let mut injected = Injected::default();
    let mut ticker = tokio::time::interval(EVERY);
    ticker.tick().await; // The first tick is immediate.
    let mut bus_turn = true;
    loop {
        ticker.tick().await;
        if world.stop.load(Ordering::SeqCst) {
            return injected;
        }
        match &mut target {
            Target::Redis(conn) => {
                let kind = if bus_turn { "pubsub" } else { "normal" };
                let killed: redis::RedisResult<u64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg(kind)
                    .query_async(conn)
                    .await;
                match killed {
                    Ok(n) => injected.clients_killed += n,
                    Err(_) => injected.failed += 1,
                }
            }
            Target::Embedded if bus_turn => {
                let bus = MemoryBus::global();
                bus.disconnect();
                tokio::time::sleep(OUTAGE).await;
                bus.reconnect();
            }
            Target::Embedded => {
                let l2 = MemoryL2::global();
                l2.set_unavailable(true);
                tokio::time::sleep(OUTAGE).await;
                l2.set_unavailable(false);
            }
        }
        if bus_turn {
            injected.bus += 1;
        } else {
            injected.l2 += 1;
        }
        bus_turn = !bus_turn;
    }
}
