//! `watch`: print what passes on the event channel, one line per message.

use cache_core::{BusItem, ConnectionState, EventBus};
use cache_redis::RedisBus;

use crate::fail::{print_line, CliError, Outcome};
use crate::node::Target;
use crate::render;

/// Subscribes to the channel and prints one line per message until `count` messages (if given)
/// have been printed. Connection changes print a `connection:` line and are not counted.
///
/// # Errors
/// Redis cannot be reached, or the subscription ends for good.
pub async fn run(target: &Target, count: Option<u64>) -> Result<Outcome, CliError> {
    let bus = RedisBus::connect(&target.config()).await?;
    // The subscription is live once `subscribe` returns, so the first line tells a reader that
    // anything published from now on will be printed.
    let mut subscription = bus.subscribe().await?;
    print_line(&format!(
        "watching {} on {}",
        target.channel,
        cache_redis::redact(&target.url)
    ))?;
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let line = match subscription.next().await {
            Some(BusItem::Message(bytes)) => {
                seen += 1;
                render::watch_line(&bytes, render::now_secs())
            }
            Some(BusItem::State(ConnectionState::Disconnected)) => {
                "connection: lost; reconnecting (events published meanwhile are lost)".to_owned()
            }
            Some(BusItem::State(ConnectionState::Resubscribed)) => {
                "connection: resubscribed".to_owned()
            }
            Some(_) => continue,
            None => return Err(CliError::new("the event subscription ended")),
        };
        print_line(&line)?;
    }
    Ok(Outcome::Done)
}
