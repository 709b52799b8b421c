//! The faults of a run: a schedule drawn from the seed before the run starts, played by one
//! task, and healed all at once when the workload ends.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use cache_memory::{MemoryBus, MemoryL2, Replica};

use super::links::NodeLink;
use super::rng::Rng;
use super::workload::{AVAIL, PRICING};
use super::world::World;

/// One thing done to the fleet's backends or to one node's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// The next publishes reach nobody.
    DropNext(u64),
    /// The next publishes reach everyone twice.
    DuplicateNext(u64),
    /// Publishes are held back...
    Hold,
    /// ...then delivered in order (a delay)...
    Release,
    /// ...or in reverse order (a reordering).
    ReleaseReversed,
    /// Every subscription is lost; what is published meanwhile is lost to it.
    Disconnect,
    /// Every lost subscription is back.
    Reconnect,
    /// Publishes fail (the change and its log entry land).
    FailPublishes(bool),
    /// Every subscription ends for good: listeners stop; only the logs keep nodes fresh.
    EndSubscriptions,
    /// L2 restarts empty: data, generations, fences and logs lost; new epochs.
    RestartL2,
    /// L2's replica stops receiving changes (its link breaks)...
    Replicate,
    /// ...and is promoted: every change since is lost, the logs' next numbers repeat ones given
    /// out, and L2's server epoch moves (a failover under asynchronous replication).
    FailOver,
    /// L2 is unreachable for everyone.
    L2Down(bool),
    /// A namespace's log keeps only its newest entries.
    TrimLog(&'static str, usize),
    /// A node's subscription drops what it receives.
    Deaf(usize, bool),
    /// A node's link to L2 fails its commands.
    Cut(usize, bool),
    /// A node's next commands run in L2 but their replies are lost.
    LoseReplies(usize, u64),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::DropNext(n) => write!(f, "bus: drop the next {n} publishes"),
            Action::DuplicateNext(n) => write!(f, "bus: duplicate the next {n} publishes"),
            Action::Hold => write!(f, "bus: hold publishes"),
            Action::Release => write!(f, "bus: release held publishes in order"),
            Action::ReleaseReversed => write!(f, "bus: release held publishes reversed"),
            Action::Disconnect => write!(f, "bus: disconnect every subscriber"),
            Action::Reconnect => write!(f, "bus: reconnect"),
            Action::FailPublishes(on) => write!(f, "bus: fail publishes = {on}"),
            Action::EndSubscriptions => write!(f, "bus: end every subscription"),
            Action::RestartL2 => write!(f, "L2: restart empty"),
            Action::Replicate => write!(f, "L2: the replica's link breaks"),
            Action::FailOver => write!(f, "L2: fail over to the replica"),
            Action::L2Down(on) => write!(f, "L2: unavailable = {on}"),
            Action::TrimLog(ns, keep) => write!(f, "L2: trim {ns}'s log to {keep} entries"),
            Action::Deaf(n, on) => write!(f, "node-{n}: deaf subscription = {on}"),
            Action::Cut(n, on) => write!(f, "node-{n}: link to L2 cut = {on}"),
            Action::LoseReplies(n, k) => write!(f, "node-{n}: lose the next {k} replies"),
        }
    }
}

/// The schedule of a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Actions by time since the run's origin (stable for equal times).
    pub(crate) steps: Vec<(Duration, Action)>,
    /// How many faults of each kind.
    pub(crate) kinds: BTreeMap<&'static str, u32>,
}

impl Plan {
    /// Draws `faults` faults starting within `work`; windows are cut short by the heal at
    /// `work`'s end. `nodes` are the nodes per-node faults may hit.
    pub(crate) fn draw(rng: &mut Rng, faults: u64, work: Duration, nodes: &[usize]) -> Self {
        let mut plan = Plan::default();
        let work_ms = work.as_millis() as u64;
        for _ in 0..faults {
            let at = Duration::from_millis(rng.range(0..=work_ms - 1));
            let node = nodes[rng.index(nodes.len())];
            match rng.below(100) {
                0..=9 => plan.once("drop", at, Action::DropNext(rng.range(1..=4))),
                10..=16 => plan.once("duplicate", at, Action::DuplicateNext(rng.range(1..=4))),
                17..=25 => {
                    let d = rng.millis(20..=1_500);
                    plan.window("delay", at, d, Action::Hold, Action::Release);
                }
                26..=32 => {
                    let d = rng.millis(5..=400);
                    plan.window("reorder", at, d, Action::Hold, Action::ReleaseReversed);
                }
                33..=41 => {
                    let d = rng.millis(10..=1_500);
                    plan.window("disconnect", at, d, Action::Disconnect, Action::Reconnect);
                }
                42..=52 => {
                    let d = rng.millis(50..=2_500);
                    let (on, off) = (Action::Deaf(node, true), Action::Deaf(node, false));
                    plan.window("deaf", at, d, on, off);
                }
                53..=55 => {
                    let d = rng.millis(5..=600);
                    plan.window("failover", at, d, Action::Replicate, Action::FailOver);
                }
                56..=58 => {
                    plan.once("l2_restart", at, Action::RestartL2);
                    if rng.chance(40) {
                        // A crash loop: it restarts again soon after.
                        let again = at + rng.millis(50..=500);
                        plan.steps.push((again, Action::RestartL2));
                    }
                }
                59..=65 => {
                    let d = rng.millis(10..=1_500);
                    let (on, off) = (Action::L2Down(true), Action::L2Down(false));
                    plan.window("l2_down", at, d, on, off);
                }
                66..=72 => {
                    let ns = if rng.chance(50) { AVAIL } else { PRICING };
                    let keep = rng.range(0..=2) as usize;
                    plan.once("trim", at, Action::TrimLog(ns, keep));
                }
                73..=78 => {
                    let d = rng.millis(10..=1_500);
                    let (on, off) = (Action::FailPublishes(true), Action::FailPublishes(false));
                    plan.window("publish_failures", at, d, on, off);
                }
                79..=87 => {
                    let d = rng.millis(100..=2_500);
                    plan.partition(at, d, node);
                }
                88..=92 => {
                    let d = rng.millis(10..=1_500);
                    let (on, off) = (Action::Cut(node, true), Action::Cut(node, false));
                    plan.window("l2_link_cut", at, d, on, off);
                }
                93..=97 => {
                    let n = rng.range(1..=3);
                    plan.once("lost_replies", at, Action::LoseReplies(node, n));
                }
                _ => plan.once("end_subscriptions", at, Action::EndSubscriptions),
            }
        }
        plan.steps.retain(|(at, _)| *at < work);
        plan.steps.sort_by_key(|(at, _)| *at);
        plan
    }

    /// A node cut off from both L2 and the bus for `d`, from `at`.
    pub(crate) fn partition(&mut self, at: Duration, d: Duration, node: usize) {
        *self.kinds.entry("partition").or_default() += 1;
        self.steps.push((at, Action::Deaf(node, true)));
        self.steps.push((at, Action::Cut(node, true)));
        self.steps.push((at + d, Action::Deaf(node, false)));
        self.steps.push((at + d, Action::Cut(node, false)));
    }

    pub(crate) fn once(&mut self, kind: &'static str, at: Duration, action: Action) {
        *self.kinds.entry(kind).or_default() += 1;
        self.steps.push((at, action));
    }

    pub(crate) fn window(
        &mut self,
        kind: &'static str,
        at: Duration,
        d: Duration,
        on: Action,
        off: Action,
    ) {
        *self.kinds.entry(kind).or_default() += 1;
        self.steps.push((at, on));
        self.steps.push((at + d, off));
    }

    /// Keeps the first restart of L2 and drops the others.
    pub(crate) fn restart_at_most_once(&mut self) {
        let mut seen = false;
        self.steps.retain(|(_, action)| {
            if *action != Action::RestartL2 {
                return true;
            }
            let keep = !seen;
            seen = true;
            keep
        });
        if let Some(n) = self.kinds.get_mut("l2_restart") {
            *n = 1;
        }
    }

    /// Whether the schedule ends every subscription.
    pub(crate) fn ends_subscriptions(&self) -> bool {
        self.kinds.contains_key("end_subscriptions")
    }

    /// The schedule, one line per action, for a failure's report.
    pub(crate) fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|(at, action)| format!("{:>9.3?}  {action}", at))
            .collect()
    }
}

/// What the fault injector acts on.
pub(crate) struct Targets {
    pub(crate) bus: Arc<MemoryBus>,
    pub(crate) l2: Arc<MemoryL2>,
    pub(crate) links: Vec<Arc<NodeLink>>,
    /// The copy a [`Action::FailOver`] promotes, from the last [`Action::Replicate`].
    pub(crate) replica: std::sync::Mutex<Option<Replica>>,
}

impl Targets {
    pub(crate) fn apply(&self, action: Action) {
        match action {
            Action::DropNext(n) => self.bus.drop_next(n),
            Action::DuplicateNext(n) => self.bus.duplicate_next(n),
            Action::Hold => self.bus.hold(),
            Action::Release => self.bus.release(),
            Action::ReleaseReversed => self.bus.release_reversed(),
            Action::Disconnect => self.bus.disconnect(),
            Action::Reconnect => self.bus.reconnect(),
            Action::FailPublishes(on) => self.bus.fail_publishes(on),
            Action::EndSubscriptions => self.bus.end_subscriptions(),
            Action::RestartL2 => self.l2.restart_empty(),
            Action::Replicate => *self.replica() = Some(self.l2.replica()),
            Action::FailOver => {
                if let Some(replica) = self.replica().take() {
                    self.l2.fail_over_to(replica);
                }
            }
            Action::L2Down(on) => self.l2.set_unavailable(on),
            Action::TrimLog(ns, keep) => self.l2.trim_log(ns, keep),
            Action::Deaf(n, on) => self.links[n].deaf.store(on, SeqCst),
            Action::Cut(n, on) => self.links[n].cut.store(on, SeqCst),
            Action::LoseReplies(n, k) => self.links[n].lose_replies(k),
        }
    }

    fn replica(&self) -> std::sync::MutexGuard<'_, Option<Replica>> {
        self.replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends every fault: held publishes delivered, subscribers reconnected, L2 and every link
    /// back.
    pub(crate) fn heal(&self) {
        self.bus.release();
        self.bus.reconnect();
        self.bus.fail_publishes(false);
        self.l2.set_unavailable(false);
        for link in &self.links {
            link.heal();
        }
    }
}

/// Plays `plan` against `targets`, each step at its time since `origin`.
pub(crate) async fn inject(plan: Plan, targets: Arc<Targets>, world: Arc<World>) {
    let origin = world.origin();
    for (at, action) in plan.steps {
        tokio::time::sleep_until(origin + at).await;
        world.trace(|| format!("fault: {action}"));
        targets.apply(action);
    }
}
