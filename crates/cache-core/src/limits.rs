//! Bounds on every input a node takes from outside: messages on the channel (checked before
//! they are decoded), and the parameters and tags callers pass. Each has a safe default and a
//! setter; a message over a bound is refused and counted, a call over one fails with
//! [`ErrorKind::LimitExceeded`], and nothing is allocated in proportion to the input before
//! the check.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Scope, MAX_EVENT_BYTES};

/// The bounds; [`Limits::default`] is what a node uses unless told otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    event_bytes: usize,
    json_depth: usize,
    namespaces_per_event: usize,
    keys_per_event: usize,
    params_bytes: usize,
    tags_per_entry: usize,
    tag_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            event_bytes: MAX_EVENT_BYTES,
            json_depth: 16,
            namespaces_per_event: 64,
            keys_per_event: 1_024,
            params_bytes: 4 * 1024,
            tags_per_entry: 32,
            tag_bytes: 256,
        }
    }
}

macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        impl Limits {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: usize) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Bytes of one message on the channel, checked before anything else (default 64 KiB, the
    /// most [`MAX_EVENT_BYTES`] allows; a larger value is capped to it).
    event_bytes,
    /// Nesting of arrays and objects in one message, checked by a scan before it is parsed
    /// (default 16; an event needs 3).
    json_depth,
    /// Namespaces one event may name (default 64).
    namespaces_per_event,
    /// Keys one event may name (default 1,024).
    keys_per_event,
    /// Bytes of a call's parameters as canonical JSON (default 4 KiB).
    params_bytes,
    /// Resource tags on one entry (default 32).
    tags_per_entry,
    /// Bytes of one resource tag (default 256).
    tag_bytes,
}

impl Limits {
    /// The bound on a call's parameters, in bytes of canonical JSON.
    pub fn max_params_bytes(&self) -> usize {
        self.params_bytes
    }

    /// The most keys one event may name (what an issuer splits a batch by).
    pub fn max_keys_per_event(&self) -> usize {
        self.keys_per_event
    }

    /// Checks a raw message before it is decoded: its size, then its nesting (one pass over
    /// its bytes, no allocation).
    ///
    /// # Errors
    /// [`EventLimit::Bytes`] or [`EventLimit::Depth`].
    pub fn check_message(&self, message: &[u8]) -> std::result::Result<(), EventLimit> {
        if message.len() > self.event_bytes.min(MAX_EVENT_BYTES) {
            return Err(EventLimit::Bytes);
        }
        if nesting_exceeds(message, self.json_depth) {
            return Err(EventLimit::Depth);
        }
        Ok(())
    }

    /// Checks a decoded event's lists.
    ///
    /// # Errors
    /// [`EventLimit::Namespaces`] or [`EventLimit::Keys`].
    pub fn check_event(&self, event: &Event) -> std::result::Result<(), EventLimit> {
        if event.affected_namespaces.len() > self.namespaces_per_event {
            return Err(EventLimit::Namespaces);
        }
        if let Scope::Keys(keys) = &event.scope {
            if keys.len() > self.keys_per_event {
                return Err(EventLimit::Keys);
            }
        }
        Ok(())
    }

    /// Checks the resource tags of one entry.
    ///
    /// # Errors
    /// [`ErrorKind::LimitExceeded`] naming the bound.
    pub fn check_tags(&self, tags: &[String]) -> Result<()> {
        if tags.len() > self.tags_per_entry {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "{} resource tags on one entry; at most {} are allowed",
                    tags.len(),
                    self.tags_per_entry
                ),
            ));
        }
        if let Some(tag) = tags.iter().find(|t| t.len() > self.tag_bytes) {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a resource tag of {} bytes; at most {} are allowed",
                    tag.len(),
                    self.tag_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Which bound a message broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventLimit {
    /// Too many bytes.
    Bytes,
    /// Arrays and objects nested too deep.
    Depth,
    /// Too many namespaces named.
    Namespaces,
    /// Too many keys named.
    Keys,
}

impl EventLimit {
    /// A short name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLimit::Bytes => "too many bytes",
            EventLimit::Depth => "nested too deep",
            EventLimit::Namespaces => "too many namespaces",
            EventLimit::Keys => "too many keys",
        }
    }
}

impl fmt::Display for EventLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `json` nests arrays and objects deeper than `limit`, brackets inside strings aside.
/// Invalid JSON is not this function's concern (the parser refuses it).
fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let limits = Limits::default().json_depth(3);
        assert!(limits.check_message(br#"{"a":[{"b":1}]}"#).is_ok());
        assert_eq!(
            limits.check_message(br#"{"a":[{"b":[1]}]}"#),
            Err(EventLimit::Depth)
        );
        // Brackets and escaped quotes inside strings do not count.
        assert!(limits
            .check_message(br#"{"a":"[[[[{{{{\"[[[[","b":[1]}"#)
            .is_ok());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            Limits::default()
                .event_bytes(usize::MAX)
                .check_message(&deep.as_bytes()[..60_000]),
            Err(EventLimit::Depth)
        );
    }

    #[test]
    fn size_is_checked_first_and_capped_at_the_event_limit() {
        let limits = Limits::default().event_bytes(10);
        assert_eq!(limits.check_message(&[b' '; 11]), Err(EventLimit::Bytes));
        assert!(limits.check_message(&[b' '; 10]).is_ok());
        let huge = Limits::default().event_bytes(usize::MAX);
        assert_eq!(
            huge.check_message(&vec![b' '; MAX_EVENT_BYTES + 1]),
            Err(EventLimit::Bytes)
        );
    }

    #[test]
    fn lists_in_an_event_are_bounded() {
        let limits = Limits::default().namespaces_per_event(2).keys_per_event(1);
        let mut event = Event::new(EventType::BookingCreated, "b", "n", "e", 1.0);
        event.affected_namespaces = vec!["a".into(), "b".into()];
        assert!(limits.check_event(&event).is_ok());
        event.affected_namespaces.push("c".into());
        assert_eq!(limits.check_event(&event), Err(EventLimit::Namespaces));
        event.affected_namespaces.clear();
        event.scope = Scope::Keys(vec!["a:1".into(), "a:2".into()]);
        assert_eq!(limits.check_event(&event), Err(EventLimit::Keys));
    }

    #[test]
    fn tags_are_bounded_in_number_and_size() {
        let limits = Limits::default().tags_per_entry(2).tag_bytes(4);
        assert!(limits.check_tags(&["a".into(), "abcd".into()]).is_ok());
        let err = limits
            .check_tags(&["a".into(), "b".into(), "c".into()])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        let err = limits.check_tags(&["abcde".into()]).unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }
}
