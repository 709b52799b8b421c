//! No secret leaves a node (its own test binary: see tests/Cargo.toml): through a whole life on a password-protected redis-server, with
//! event keys (a failed connection, writes and events, a forged message refused, Redis going
//! away and coming back, shutdown), every log line at every level, every error's text, source
//! chain and `unwrap()` panic message, and the `Debug` of every configuration and statistic
//! are searched for the password and for the signing key in every spelling.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_core::signing::{EventKeys, SigningKey};
use cache_core::{EventBus, L2Store};
use cache_edge::{EdgeCache, Notification};
use cache_redis::{RedisBus, RedisConfig, RedisL2};
use serde_json::json;
use test_support::{eventually, RedisServer};

const PASSWORD: &str = "pw-Zq81-never-shown";
const KEY_BYTE: u8 = 0x5c;

/// Everything written to the log, shared with the subscriber's writer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every text a secret could hide in: the error's `Display` and `Debug`, its sources', and the
/// message a caller's `unwrap()` of it panics with.
fn errors_of(error: &cache_core::Error) -> String {
    let owned = error.clone();
    // The panic is caught here and its message examined: the default hook would print it (and
    // a backtrace) as if something had gone wrong.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        // What a caller's `.unwrap()` of the error prints.
        std::hint::black_box(Err::<(), _>(owned)).unwrap();
    }));
    std::panic::set_hook(hook);
    let unwrapped = caught
        .err()
        .and_then(|payload| payload.downcast_ref::<String>().cloned())
        .expect("unwrap of an error panics with a message");
    let mut text = format!("{error} / {error:?} / {unwrapped}");
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(&format!(" / {e} / {e:?}"));
        source = e.source();
    }
    text
}

// The only test of this binary: its subscriber is the process's, so every thread's log lines,
// at every call site, reach the capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_key_appears_in_any_log_line_error_or_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let mut server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    let url = server
        .url()
        .replacen("redis://", &format!("redis://:{PASSWORD}@"), 1);
    let config = RedisConfig::new(url.as_str())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .ping_interval(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(300));
    let keys = EventKeys::new(SigningKey::new("fleet", vec![KEY_BYTE; 32]).unwrap());
    let mut texts = vec![format!("{config:?}"), format!("{keys:?}")];

    // A wrong password: the error says so without the password it was given.
    let wrong = RedisConfig::new(url.replacen(PASSWORD, &format!("{PASSWORD}-wrong"), 1));
    match RedisL2::connect(&wrong).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => texts.push(errors_of(&e)),
    }
    match RedisBus::connect(&wrong).await {
        Ok(bus) => {
            if let Err(e) = bus.subscribe().await {
                texts.push(errors_of(&e));
            }
        }
        Err(e) => texts.push(errors_of(&e)),
    }

    let node = |id: &'static str| {
        let (config, keys) = (config.clone(), keys.clone());
        async move {
            let l2: Arc<dyn L2Store> = Arc::new(RedisL2::connect(&config).await.unwrap());
            let bus: Arc<dyn EventBus> = Arc::new(RedisBus::connect(&config).await.unwrap());
            EdgeCache::builder()
                .node_id(id)
                .l2(l2)
                .bus(bus)
                .event_keys(keys)
                .build()
                .await
                .unwrap()
        }
    };
    let (a, b) = (node("a").await, node("b").await);
    let g = json!({"gpu_id": "g-1"});
    a.set("gpu_availability", &g, &"free".to_owned())
        .await
        .unwrap();
    b.get::<String, _>("gpu_availability", &g).await.unwrap();
    let applied = b.stats().events_applied;
    a.notify(Notification::booking_created("bk", "g-1"))
        .await
        .unwrap();
    eventually("b applies the booking", Duration::from_secs(10), || async {
        b.stats().events_applied > applied
    })
    .await;
    // A forgery, refused and logged.
    let forged = EventKeys::new(SigningKey::new("fleet", vec![1; 32]).unwrap())
        .sign(br#"{"source_node":"x","event_type":"booking_created","event_id":"f"}"#);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(config.channel_name())
        .arg(forged)
        .query_async(&mut raw)
        .await
        .unwrap();
    eventually("b refuses the forgery", Duration::from_secs(10), || async {
        b.stats().rejected_bad_mac > 0
    })
    .await;

    // Redis goes away: every failure on the way is logged and returned.
    server.stop();
    if let Err(e) = a.set("gpu_availability", &g, &"gone".to_owned()).await {
        texts.push(errors_of(&e));
    }
    if let Err(e) = a.l2_info().await {
        texts.push(errors_of(&e));
    }
    eventually("b notices", Duration::from_secs(10), || async {
        !b.health().await.bus_connected
    })
    .await;
    server.restart();
    eventually("b is back", Duration::from_secs(10), || async {
        b.health().await.bus_connected
    })
    .await;
    texts.push(format!("{:?} {:?}", a.stats(), b.health().await));
    a.shutdown().await;
    b.shutdown().await;

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.lines().count() > 10 && log.contains("refused an event"),
        "the capture must hold the node's life: {log}"
    );
    texts.push(log);
    let key_hex = format!("{KEY_BYTE:02x}").repeat(8);
    let key_hex_upper = key_hex.to_uppercase();
    let key_decimal = format!("{KEY_BYTE}, {KEY_BYTE}, {KEY_BYTE}");
    for text in &texts {
        for secret in [PASSWORD, &key_hex, &key_hex_upper, &key_decimal] {
            assert!(
                !text.contains(secret),
                "{secret:?} appears in: {}",
                &text[text.find(secret).unwrap().saturating_sub(200)..]
                    .chars()
                    .take(400)
                    .collect::<String>()
            );
        }
    }
}
