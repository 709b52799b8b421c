//! Row 9's delivery machinery: the events published, the subscribers (edge-cache
//! `RedisBus` subscriptions and raw redis-rs ones) and the per-subscriber bookkeeping that proves
//! every event arrived exactly once, the publishers, and the sustained-rate phases. The row
//! itself (what runs in which order, what is reported) is in `mod.rs`.

use super::*;

/// The encoded events one implementation publishes in turn.
pub(super) struct Events {
    /// Each an event as [`Event::encode`] wrote it, without a log position.
    pub(super) bodies: Vec<Vec<u8>>,
    /// Keys each event invalidates.
    pub(super) keys_per_event: usize,
}

impl Events {
    /// [`DISTINCT_EVENTS`] invalidations of `per_event` keys each, the keys taken in turn from
    /// `keys`, each checked to decode as itself within the default [`Limits`].
    pub(super) fn new(keys: &[CacheKey], per_event: usize) -> anyhow::Result<Events> {
        let mut bodies = Vec::with_capacity(DISTINCT_EVENTS);
        for j in 0..DISTINCT_EVENTS {
            let start = j * per_event % keys.len();
            let names: Vec<String> = (start..start + per_event)
                .map(|i| keys[i % keys.len()].as_str().to_owned())
                .collect();
            let mut event = Event::new(
                EventType::ManualInvalidation,
                "gpu_availability",
                PUBLISHER,
                event_id(j),
                1_767_225_600.0 + j as f64 / 1_000.0,
            );
            event
                .data
                .insert("region".to_owned(), serde_json::json!("eu-west-1"));
            event.scope = Scope::Keys(names);
            let body = event.encode();
            let decoded = Event::decode(&body).context("an encoded event does not decode")?;
            ensure!(decoded == event, "an event does not decode as itself");
            Limits::default()
                .check_event(&decoded)
                .map_err(|limit| anyhow!("an event breaks the default limits: {limit}"))?;
            ensure!(
                body.ends_with(b"}"),
                "an encoded event does not end its object"
            );
            bodies.push(body);
        }
        let events = Events {
            bodies,
            keys_per_event: per_event,
        };
        // What a sequenced store would publish decodes with its position.
        let position = LogPosition::new(KEY_NAMESPACE, 7, 42);
        let sent = Event::decode(&events.payload(7, 42))?;
        ensure!(
            sent.positions == [position],
            "a published event does not carry its position"
        );
        Ok(events)
    }

    /// The event published as number `seq` of phase `epoch`, as a sequenced store publishes
    /// it: the body with the position spliced in before its closing brace.
    pub(super) fn payload(&self, epoch: u64, seq: u64) -> Vec<u8> {
        splice_positions(
            self.body(seq),
            &[LogPosition::new(KEY_NAMESPACE, epoch, seq)],
        )
    }

    /// The body of event number `seq` (from 1).
    pub(super) fn body(&self, seq: u64) -> &[u8] {
        let i = usize::try_from(seq.saturating_sub(1)).unwrap_or(0) % self.bodies.len();
        &self.bodies[i]
    }
}

/// A UUID-shaped event id (version 4 layout), different for each `j`, as nodes write them.
pub(super) fn event_id(j: usize) -> String {
    let mut x = (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x ^= x >> 30;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        x
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// A counter on a cache line of its own: each subscriber writes its own.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Counter(AtomicU64);

/// One phase: the events one implementation publishes to its N subscribers, and what they
/// counted.
pub(super) struct Phase {
    /// The log epoch the phase's events carry.
    pub(super) epoch: u64,
    pub(super) subscribers: usize,
    pub(super) events: Arc<Events>,
    pub(super) started: Instant,
    /// Per event (sequence number - 1): subscribers that counted it.
    pub(super) delivered: Box<[AtomicU32]>,
    /// Per event of a propagation phase: when its last subscriber counted it, in nanoseconds
    /// since `started` (empty in a sustained phase).
    pub(super) done_at: Box<[AtomicU64]>,
    /// When the latest event was counted by its last subscriber, in nanoseconds since `started`.
    pub(super) last_done: AtomicU64,
    /// Events every subscriber counted.
    pub(super) completed: AtomicU64,
    /// `completed` that the harness waits for (`u64::MAX` until it waits).
    pub(super) expected: AtomicU64,
    /// Per subscriber: events counted.
    pub(super) received: Box<[Counter]>,
    /// One permit per event a sustained phase may still publish (see [`WINDOW`]).
    pub(super) room: Semaphore,
}

impl Phase {
    pub(super) fn new(
        epoch: u64,
        subscribers: usize,
        events: &Arc<Events>,
        capacity: usize,
        timed: bool,
    ) -> Phase {
        Phase {
            epoch,
            subscribers,
            events: Arc::clone(events),
            started: Instant::now(),
            delivered: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            done_at: (0..if timed { capacity } else { 0 })
                .map(|_| AtomicU64::new(0))
                .collect(),
            last_done: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
            received: (0..subscribers).map(|_| Counter::default()).collect(),
            room: Semaphore::new(WINDOW),
        }
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(super) fn payload(&self, seq: u64) -> Vec<u8> {
        self.events.payload(self.epoch, seq)
    }

    /// Checks that every subscriber counted each of the `published` events (each counted at
    /// most once by a subscriber, which [`Receiver`] checks as it counts).
    pub(super) fn verify(&self, published: u64) -> anyhow::Result<()> {
        let short: Vec<(usize, u64)> = self
            .received
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.0.load(Ordering::Acquire)))
            .filter(|&(_, got)| got != published)
            .collect();
        if let Some(&(first, got)) = short.first() {
            bail!(
                "{} of {} subscribers did not receive each of the {published} events exactly \
                 once (subscriber {first} counted {got})",
                short.len(),
                self.subscribers
            );
        }
        Ok(())
    }
}

/// What one group of subscribers (raw or edge-cache) shares: the phase running and the first
/// failure any of them saw.
pub(super) struct Slot {
    pub(super) current: Mutex<Arc<Phase>>,
    pub(super) failed: AtomicBool,
    pub(super) error: Mutex<Option<String>>,
    /// Told when a phase's last awaited event has been counted, or on a failure.
    pub(super) progress: Notify,
}

impl Slot {
    pub(super) fn new(idle: Phase) -> Slot {
        Slot {
            current: Mutex::new(Arc::new(idle)),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            progress: Notify::new(),
        }
    }

    pub(super) fn current(&self) -> Arc<Phase> {
        Arc::clone(&lock(&self.current))
    }

    pub(super) fn start(&self, phase: &Arc<Phase>) {
        *lock(&self.current) = Arc::clone(phase);
    }

    pub(super) fn fail(&self, why: String) {
        let mut error = lock(&self.error);
        if error.is_none() {
            *error = Some(why);
        }
        drop(error);
        self.failed.store(true, Ordering::SeqCst);
        // Publishers waiting for room stop waiting; the harness wakes.
        self.current().room.close();
        self.progress.notify_waiters();
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            let why = lock(&self.error).clone().unwrap_or_default();
            bail!("{why}");
        }
        Ok(())
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One subscriber's bookkeeping, the same for raw and edge-cache.
pub(super) struct Receiver {
    pub(super) index: usize,
    pub(super) slot: Arc<Slot>,
    pub(super) phase: Arc<Phase>,
    /// Bit `seq - 1`: event `seq` of the phase counted. A bit per event rather than the next
    /// number expected: publishes in flight at once may reach Redis in another order than they
    /// were numbered (one publisher's thread preempted between taking a number and sending it
    /// while the others go on), so events arrive in order only in the propagation phases.
    pub(super) seen: Vec<u64>,
}

impl Receiver {
    pub(super) fn new(index: usize, slot: &Arc<Slot>) -> Receiver {
        Receiver {
            index,
            slot: Arc::clone(slot),
            phase: slot.current(),
            seen: Vec::new(),
        }
    }

    pub(super) fn on_message(&mut self, message: &[u8]) {
        if let Err(why) = self.count(message) {
            self.slot.fail(format!("subscriber {}: {why}", self.index));
        }
    }

    pub(super) fn count(&mut self, message: &[u8]) -> Result<(), String> {
        let positions = positions_in_tail(message).ok_or("a message without a log position")?;
        let [position] = positions.as_slice() else {
            return Err(format!("a message with {} log positions", positions.len()));
        };
        if position.epoch != self.phase.epoch {
            self.phase = self.slot.current();
            self.seen.clear();
            if position.epoch != self.phase.epoch {
                return Err(format!(
                    "an event of phase {} during phase {}",
                    position.epoch, self.phase.epoch
                ));
            }
        }
        let phase = &*self.phase;
        let seq = position.seq;
        let index = usize::try_from(seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .filter(|&i| i < phase.delivered.len())
            .ok_or_else(|| format!("event {seq} was never published"))?;
        let body = phase.events.body(seq);
        let tail = tail_start(message).unwrap_or(0);
        if message[..tail] != body[..body.len() - 1] {
            return Err(format!("event {seq} arrived altered"));
        }
        // Each event once.
        let (word, bit) = (index / 64, 1_u64 << (index % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            return Err(format!("event {seq} arrived twice"));
        }
        self.seen[word] |= bit;
        phase.received[self.index].0.fetch_add(1, Ordering::Release);
        let delivered = phase.delivered[index].fetch_add(1, Ordering::AcqRel) as usize + 1;
        match delivered.cmp(&phase.subscribers) {
            Order::Less => {}
            Order::Equal => {
                let at = phase.now();
                if let Some(done) = phase.done_at.get(index) {
                    done.store(at, Ordering::Relaxed);
                }
                phase.last_done.fetch_max(at, Ordering::Relaxed);
                let completed = phase.completed.fetch_add(1, Ordering::SeqCst) + 1;
                if completed.is_multiple_of(BURST) {
                    phase.room.add_permits(IN_FLIGHT);
                }
                if completed >= phase.expected.load(Ordering::SeqCst) {
                    self.slot.progress.notify_waiters();
                }
            }
            Order::Greater => {
                return Err(format!(
                    "event {seq} delivered more often than there are subscribers"
                ))
            }
        }
        Ok(())
    }
}

/// Reads an edge-cache subscription as a node's listener does, counting its messages.
pub(super) async fn read_edge(mut subscription: Box<dyn Subscription>, mut receiver: Receiver) {
    while let Some(item) = subscription.next().await {
        match item {
            BusItem::Message(message) => receiver.on_message(&message),
            BusItem::State(ConnectionState::Connected) => {}
            other => receiver.slot.fail(format!(
                "edge-cache subscription {} reported {other:?} (a lost connection or a full \
                 queue)",
                receiver.index
            )),
        }
    }
    receiver
        .slot
        .fail(format!("edge-cache subscription {} ended", receiver.index));
}

/// Reads a raw redis-rs pub/sub connection, counting its messages.
pub(super) async fn read_raw(pubsub: redis::aio::PubSub, mut receiver: Receiver) {
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        receiver.on_message(message.get_payload_bytes());
    }
    receiver.slot.fail(format!(
        "raw subscriber {} lost its connection",
        receiver.index
    ));
}

/// How a group publishes.
#[derive(Clone)]
pub(super) enum Publisher {
    Raw(MultiplexedConnection),
    Edge(RedisBus),
}

impl Publisher {
    pub(super) async fn publish(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Raw(conn) => {
                let mut conn = conn.clone();
                redis::cmd("PUBLISH")
                    .arg(RAW_CHANNEL)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await?;
            }
            Publisher::Edge(bus) => bus.publish(payload).await?,
        }
        Ok(())
    }
}

/// One implementation's publisher and subscribers. Dropping it ends every subscriber task, and
/// with it the subscription's connection.
pub(super) struct Group {
    pub(super) channel: &'static str,
    pub(super) url: String,
    pub(super) slot: Arc<Slot>,
    pub(super) publisher: Publisher,
    pub(super) readers: Vec<JoinHandle<()>>,
}

impl Group {
    pub(super) fn new(
        channel: &'static str,
        url: &str,
        publisher: Publisher,
        idle: &Arc<Events>,
    ) -> Group {
        Group {
            channel,
            url: url.to_owned(),
            slot: Arc::new(Slot::new(Phase::new(0, 0, idle, 0, false))),
            publisher,
            readers: Vec::new(),
        }
    }

    /// Adds subscribers until there are `n`, [`CONNECT_AT_ONCE`] at a time.
    pub(super) async fn grow(&mut self, n: usize) -> anyhow::Result<()> {
        while self.readers.len() < n {
            let batch = (n - self.readers.len()).min(CONNECT_AT_ONCE);
            match &self.publisher {
                Publisher::Edge(bus) => {
                    let made =
                        futures_util::future::try_join_all((0..batch).map(|_| bus.subscribe()))
                            .await
                            .context("a `RedisBus` subscription failed")?;
                    for subscription in made {
                        let receiver = Receiver::new(self.readers.len(), &self.slot);
                        self.readers
                            .push(tokio::spawn(read_edge(subscription, receiver)));
                    }
                }
                Publisher::Raw(_) => {
                    let client = redis::Client::open(self.url.as_str())?;
                    let made = futures_util::future::try_join_all((0..batch).map(|_| async {
                        let mut pubsub = client.get_async_pubsub().await?;
                        pubsub.subscribe(RAW_CHANNEL).await?;
                        anyhow::Ok(pubsub)
                    }))
                    .await
                    .context("a raw pub/sub connection failed")?;
                    for pubsub in made {
                        let receiver = Receiver::new(self.readers.len(), &self.slot);
                        self.readers.push(tokio::spawn(read_raw(pubsub, receiver)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits until every awaited event of `phase` reached every subscriber.
    pub(super) async fn drain(&self, phase: &Phase, events: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let notified = self.slot.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            phase.expected.store(events, Ordering::SeqCst);
            self.slot.check()?;
            if phase.completed.load(Ordering::SeqCst) >= events {
                return phase.verify(events);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let counted: u64 = phase
                    .received
                    .iter()
                    .map(|c| c.0.load(Ordering::Acquire))
                    .sum();
                bail!(
                    "after {DEADLINE:?}, {} of {events} events had reached all {} subscribers \
                     ({} of {} deliveries): {}",
                    phase.completed.load(Ordering::SeqCst),
                    phase.subscribers,
                    thousands(counted),
                    thousands(events * phase.subscribers as u64),
                    phase
                        .verify(events)
                        .err()
                        .map_or_else(String::new, |e| e.to_string())
                );
            }
        }
    }

    /// A propagation phase: `events` events 1 ms apart; the time each took to reach the last
    /// subscriber.
    pub(super) async fn propagation(
        &self,
        phase: Arc<Phase>,
        events: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        self.slot.start(&phase);
        let mut sent = Vec::with_capacity(events);
        let mut tick = tokio::time::interval(GAP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 1..=events as u64 {
            let payload = phase.payload(seq);
            tick.tick().await;
            sent.push(phase.now());
            self.publisher.publish(payload).await?;
            self.slot.check()?;
        }
        self.drain(&phase, events as u64).await?;
        Ok(sent
            .iter()
            .zip(phase.done_at.iter())
            .map(|(&sent, done)| {
                Duration::from_nanos(done.load(Ordering::Relaxed).saturating_sub(sent))
            })
            .collect())
    }

    /// A sustained phase: as fast as the subscribers keep up for `run_for`.
    pub(super) async fn sustained(
        &self,
        phase: Arc<Phase>,
        run_for: Duration,
        info: &mut MultiplexedConnection,
    ) -> anyhow::Result<Sustained> {
        let before = ServerWork::read(info).await?;
        self.slot.start(&phase);
        let first = phase.now();
        let next = Arc::new(AtomicU64::new(1));
        let publishers: Vec<JoinHandle<anyhow::Result<()>>> = (0..IN_FLIGHT)
            .map(|_| {
                tokio::spawn(publish_while_room(
                    self.publisher.clone(),
                    Arc::clone(&self.slot),
                    Arc::clone(&phase),
                    Arc::clone(&next),
                ))
            })
            .collect();
        tokio::time::sleep(run_for).await;
        // Every number handed out before this is published; none after.
        let end = next.swap(u64::MAX / 2, Ordering::SeqCst);
        let published = (end - 1).min(phase.delivered.len() as u64);
        // Publishers waiting for room stop; those publishing finish.
        phase.room.close();
        for publisher in publishers {
            publisher.await??;
        }
        self.drain(&phase, published).await?;
        let after = ServerWork::read(info).await?;
        Ok(Sustained {
            events: published,
            elapsed: Duration::from_nanos(
                phase
                    .last_done
                    .load(Ordering::Relaxed)
                    .saturating_sub(first),
            ),
            work: before.until(after),
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// One of a sustained phase's publishers: takes the next number while there is room, publishes
/// it, until the numbers run out.
pub(super) async fn publish_while_room(
    publisher: Publisher,
    slot: Arc<Slot>,
    phase: Arc<Phase>,
    next: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(DEADLINE, phase.room.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return slot.check(),
            Err(_) => bail!(
                "no event reached every subscriber for {DEADLINE:?}: the subscribers stopped \
                 keeping up"
            ),
        }
        let seq = next.fetch_add(1, Ordering::SeqCst);
        if seq > phase.delivered.len() as u64 {
            return Ok(());
        }
        publisher.publish(phase.payload(seq)).await?;
    }
}

/// What a sustained phase did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sustained {
    pub(super) events: u64,
    pub(super) elapsed: Duration,
    pub(super) work: ServerWork,
}

impl Sustained {
    pub(super) fn add(&mut self, other: Sustained) {
        self.events += other.events;
        self.elapsed += other.elapsed;
        self.work.add(other.work);
    }

    pub(super) fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Redis CPU nanoseconds per event.
    pub(super) fn cpu_nanos(&self) -> f64 {
        self.work
            .micros_per(usize::try_from(self.events).unwrap_or(usize::MAX))
            * 1e3
    }
}
