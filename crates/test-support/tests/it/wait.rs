//! `wait_until` and `eventually`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use test_support::{eventually, wait_until};

#[test]
fn wait_until_returns_once_the_check_holds() {
    let mut calls = 0;
    wait_until("the third check", Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3);
}

#[test]
#[should_panic(expected = "waiting until the impossible happens")]
fn wait_until_panics_with_what_on_timeout() {
    wait_until("the impossible happens", Duration::from_millis(20), || {
        false
    });
}

#[tokio::test]
async fn eventually_returns_once_the_check_holds() {
    let calls = Arc::new(AtomicUsize::new(0));
    eventually("the third check", Duration::from_secs(5), || {
        let calls = Arc::clone(&calls);
        async move { calls.fetch_add(1, Ordering::SeqCst) + 1 == 3 }
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
#[should_panic(expected = "waiting until the impossible happens")]
async fn eventually_panics_with_what_on_timeout() {
    eventually(
        "the impossible happens",
        Duration::from_millis(20),
        || async { false },
    )
    .await;
}
