//! A seeded fuzz of the event decoder (run by `cargo xtask test`): mutated, truncated, spliced
//! and random messages never make it panic, and whatever it accepts is an event the encoder
//! writes back and reads again unchanged, so it never accepts something the encoder could not
//! produce. `DECODER_FUZZ_CASES` and
//! `DECODER_FUZZ_SEED` change the run.

use cache_core::limits::Limits;
use cache_core::log::{splice_positions, LogPosition};
use cache_core::signing::{EventKeys, SigningKey};
use cache_core::{Event, EventType, Scope, WriteAnnouncement};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Well-formed messages of every shape: each event type and scope, a write announcement, a
/// seed event, with and without positions and a signature.
fn corpus() -> Vec<Vec<u8>> {
    let keys = EventKeys::new(SigningKey::new("k", vec![1; 32]).unwrap());
    let mut out = Vec::new();
    for (i, event_type) in [
        EventType::BookingCreated,
        EventType::BookingCancelled,
        EventType::GpuAvailabilityChanged,
        EventType::PricingUpdated,
        EventType::ManualInvalidation,
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = Event::new(
            event_type,
            format!("r-{i}"),
            "node-a",
            format!("e-{i}"),
            1.7e9,
        );
        event.affected_namespaces = vec!["gpu_avail".into(), "gpu_price".into()];
        event.scope = match i % 3 {
            0 => Scope::Namespace,
            1 => Scope::Resource,
            _ => Scope::Keys(vec![format!("gpu_avail:{}", "a".repeat(64))]),
        };
        event
            .data
            .insert("gpu_id".into(), serde_json::json!(["g-1", {"x": 1.5}]));
        let encoded = event.encode();
        out.push(splice_positions(
            &encoded,
            &[LogPosition::new("gpu_avail", 3, 9)],
        ));
        out.push(keys.sign(&encoded));
        out.push(encoded);
    }
    out.push(
        WriteAnnouncement {
            namespace: "gpu_availability",
            cache_key: "gpu_avail:00ff",
            region: "eu",
            source_node: "n",
            event_id: "w-1",
            timestamp: 2.0,
        }
        .encode(),
    );
    out.push(
        br#"{"event_type": "CacheEventType.BOOKING_CREATED", "resource_id": "booking_1",
        "data": {}, "timestamp": 1.0, "source_node": "py-node", "event_id": "e1",
        "affected_namespaces": ["gpu_avail"]}"#
            .to_vec(),
    );
    out
}

/// One random change to `message`.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], message: &mut Vec<u8>) {
    const INTERESTING: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b",",
        b":",
        b"null",
        b"-1e999",
        b"\"\\ud800\"",
        b"\xff",
    ];
    let at = rng.below(message.len() + 1);
    match rng.below(7) {
        0 if !message.is_empty() => {
            let i = rng.below(message.len());
            message[i] ^= 1 << rng.below(8);
        }
        1 => message.truncate(at),
        2 => {
            let piece = INTERESTING[rng.below(INTERESTING.len())];
            message.splice(at..at, piece.iter().copied());
        }
        3 if !message.is_empty() => {
            let end = (at + rng.below(16)).min(message.len());
            message.drain(at.min(end)..end);
        }
        4 => {
            let other = &corpus[rng.below(corpus.len())];
            let from = rng.below(other.len());
            message.splice(at..at, other[from..].iter().copied());
        }
        5 => {
            let n = rng.below(8);
            for _ in 0..n {
                message.insert(at.min(message.len()), rng.next() as u8);
            }
        }
        _ => {
            let depth = rng.below(40);
            let open: Vec<u8> = std::iter::repeat_n(b'[', depth).collect();
            message.splice(at..at, open);
        }
    }
}

#[test]
fn the_decoder_never_panics_and_accepts_only_what_the_encoder_writes() {
    let cases: usize = std::env::var("DECODER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    let seed: u64 = std::env::var("DECODER_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5EED_0FDE_C0DE);
    let corpus = corpus();
    let limits = Limits::default();
    let mut rng = Rng(seed | 1);
    let (mut accepted, mut refused) = (0usize, 0usize);
    for case in 0..cases {
        let mut message = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &corpus, &mut message);
        }
        if limits.check_message(&message).is_err() {
            refused += 1;
            continue;
        }
        match Event::decode(&message) {
            Ok(event) => {
                accepted += 1;
                let again = Event::decode(&event.encode()).unwrap_or_else(|e| {
                    panic!(
                        "case {case} (seed {seed}): accepted {:?} but its re-encoding does not \
                         decode: {e}",
                        String::from_utf8_lossy(&message)
                    )
                });
                assert_eq!(
                    again,
                    event,
                    "case {case} (seed {seed}): {:?}",
                    String::from_utf8_lossy(&message)
                );
            }
            Err(_) => refused += 1,
        }
    }
    // Both sides must be exercised, or the fuzz proves nothing.
    assert!(accepted > cases / 50, "only {accepted} of {cases} accepted");
    assert!(refused > cases / 2, "only {refused} of {cases} refused");
}
