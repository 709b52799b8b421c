//! The clocks.

use std::time::Duration;

use cache_core::{Clock, Timestamp};
use cache_memory::{ManualClock, SystemClock};

#[test]
fn manual_clock_moves_only_when_told() {
    let clock = ManualClock::new(Timestamp::from_nanos(5));
    assert_eq!(clock.now(), Timestamp::from_nanos(5));
    assert_eq!(clock.now(), Timestamp::from_nanos(5));
    clock.advance(Duration::from_nanos(10));
    assert_eq!(clock.now(), Timestamp::from_nanos(15));
    clock.set(Timestamp::from_nanos(3));
    assert_eq!(
        clock.now(),
        Timestamp::from_nanos(3),
        "set may go backwards"
    );
    clock.advance(Duration::MAX);
    assert_eq!(clock.now().as_nanos(), u64::MAX, "advance saturates");
    assert_eq!(ManualClock::default().now(), Timestamp::ZERO);
}

#[test]
fn manual_clock_is_usable_as_a_shared_dyn_clock() {
    let clock = std::sync::Arc::new(ManualClock::default());
    let shared: std::sync::Arc<dyn Clock> = clock.clone();
    clock.advance(Duration::from_secs(1));
    assert_eq!(shared.now(), Timestamp::from_nanos(1_000_000_000));
}

#[test]
fn system_clock_reads_the_wall_clock() {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = SystemClock.now();
    let diff = now
        .as_nanos()
        .abs_diff(u64::try_from(since_epoch.as_nanos()).unwrap());
    assert!(diff < 60_000_000_000, "{diff} ns away from SystemTime::now");
    // After 2020-01-01, so it is a real wall-clock reading, not a monotonic one.
    assert!(now > Timestamp::from_secs_f64(1_577_836_800.0));
}

#[test]
fn the_expiry_clock_is_never_behind_the_wall_clock_and_not_far_ahead() {
    use cache_core::Clock;
    use cache_memory::{SystemClock, EXPIRY_SLACK};
    for _ in 0..10_000 {
        let before = SystemClock.now();
        let expiry = SystemClock.expiry_now();
        let after = SystemClock.now();
        assert!(
            expiry >= after,
            "expiry clock {expiry} behind the wall clock {after}"
        );
        let ahead = expiry.saturating_since(before);
        assert!(
            ahead <= EXPIRY_SLACK + std::time::Duration::from_millis(10),
            "{ahead:?} ahead"
        );
    }
}

#[test]
fn a_manual_clock_uses_the_same_time_for_expiry() {
    use cache_core::{Clock, Timestamp};
    let clock = cache_memory::ManualClock::new(Timestamp::from_nanos(42));
    assert_eq!(clock.expiry_now(), Timestamp::from_nanos(42));
}
