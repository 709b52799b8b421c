//! `tracing` spans on the node's operations: one `edge_cache` span per read past L1, load,
//! write, invalidation and notification, at debug level, with the operation, the namespace,
//! the tier that answered (`l1`, `l2`, `miss`, `loaded`) and the outcome (`ok` or the error's
//! kind). An L1 hit records no span: it takes tens of nanoseconds, and even a disabled span's
//! checks would be a measurable share of that.

use std::future::Future;

use cache_core::Result;
use tracing::field::Empty;
use tracing::Instrument as _;

/// Runs `operation` inside its span and records its outcome.
pub(super) async fn traced<T>(
    op: &'static str,
    namespace: &str,
    operation: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::debug_span!("edge_cache", op, namespace, tier = Empty, outcome = Empty);
    let result = operation.instrument(span.clone()).await;
    if !span.is_disabled() {
        match &result {
            Ok(_) => span.record("outcome", "ok"),
            Err(e) => span.record("outcome", tracing::field::debug(e.kind())),
        };
    }
    result
}

/// Records which tier answered, on the current operation's span.
pub(super) fn tier(tier: &'static str) {
    tracing::Span::current().record("tier", tier);
}
