//! The one error type of edge-cache.

use std::fmt;
use std::sync::Arc;

/// `Result` with edge-cache's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for callers that branch on it.
///
/// Branch on the kind (or on [`Error::is_transient`]), never on the message text.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A namespace (cache type) name that is not configured.
    UnknownNamespace,
    /// A namespace configuration or set of namespaces that cannot be used.
    InvalidConfig,
    /// A TTL of zero, or one too large to represent.
    InvalidTtl,
    /// A value larger than the configured maximum; nothing was written.
    ValueTooLarge,
    /// Parameters or tags over one of the node's input bounds (`cache_core::Limits`).
    LimitExceeded,
    /// A value or parameter set that could not be encoded.
    Encode,
    /// Stored bytes that could not be decoded into the requested type.
    Decode,
    /// An event that is not valid JSON, is missing a field, or is too large.
    MalformedEvent,
    /// An event whose `event_type` names no known type.
    UnknownEventType,
    /// An event refused by the node's key ring or replay guard: unsigned where signatures are
    /// required, signed with an unknown key or a wrong MAC, an event id already seen, or a
    /// timestamp outside the replay window (see `cache_core::signing`).
    Unauthenticated,
    /// The L2 store failed (connection lost, timeout, server error).
    L2,
    /// The event bus failed to publish or subscribe.
    Bus,
    /// A loader passed to `get_or_load` failed; its error is the source.
    Loader,
    /// The cache was shut down.
    Shutdown,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::UnknownNamespace => "unknown namespace",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::InvalidTtl => "invalid TTL",
            ErrorKind::ValueTooLarge => "value too large",
            ErrorKind::LimitExceeded => "input limit exceeded",
            ErrorKind::Encode => "encoding failed",
            ErrorKind::Decode => "decoding failed",
            ErrorKind::MalformedEvent => "malformed event",
            ErrorKind::UnknownEventType => "unknown event type",
            ErrorKind::Unauthenticated => "unauthenticated event",
            ErrorKind::L2 => "L2 store error",
            ErrorKind::Bus => "event bus error",
            ErrorKind::Loader => "loader failed",
            ErrorKind::Shutdown => "cache shut down",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every edge-cache crate: a [`ErrorKind`], a message and an optional source.
///
/// It is cheap to clone (the source is shared), so one loader failure can be handed to every
/// caller waiting on the same key. It is one pointer wide, so the `Result`s of the hit path stay
/// two words (an unboxed error made every `Result<Option<Arc<T>>>` six words to move).
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone, thiserror::Error)]
#[error("{kind}: {message}")]
struct Inner {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

impl Error {
    /// An error of `kind` with a message saying what happened.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// Attaches the underlying error, kept in the [`std::error::Error::source`] chain.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.0.source = Some(Arc::from(source.into()));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Whether retrying the same call later may succeed (a store or bus that was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self.0.kind, ErrorKind::L2 | ErrorKind::Bus)
    }

    /// Shorthand for an [`ErrorKind::UnknownNamespace`] error naming `name`.
    pub fn unknown_namespace(name: &str) -> Self {
        Self::new(
            ErrorKind::UnknownNamespace,
            format!("no namespace named {name:?} is configured"),
        )
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

// Kept small on purpose; see the type's docs.
const _: () = assert!(std::mem::size_of::<Error>() == std::mem::size_of::<usize>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_and_message_and_keeps_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err = Error::new(ErrorKind::L2, "GET failed").with_source(io);
        assert_eq!(err.to_string(), "L2 store error: GET failed");
        assert!(err.is_transient());
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "reset by peer");
        assert!(!Error::unknown_namespace("x").is_transient());
    }
}
