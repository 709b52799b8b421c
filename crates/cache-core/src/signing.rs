//! Signed events: HMAC-SHA256 over the exact bytes a node publishes, with a key id, so that
//! only holders of a fleet key can make nodes drop entries.
//!
//! # Wire form
//!
//! A signing node encodes its event as usual (`{…}`), computes the MAC over those bytes
//! without their closing brace, and appends the signature as a last field:
//!
//! ```text
//! {"source_node":"a",…,"event_id":"…","sig":"<key id>:<64 hex digits>"}
//! ```
//!
//! A sequenced store then appends `"pos"` after it (see [`crate::log`]); positions come from
//! the store, not from the signer, so they are outside the MAC (a receiver checks them against
//! the log it reads, and a replayed message is refused by its event id before its positions are
//! used). A string value cannot contain the bytes `,"sig":"` (its quotes would be escaped), so
//! the field is found from the end of the message, unambiguously.
//!
//! # Keys
//!
//! [`EventKeys`] is a key ring: one key signs, every key in the ring verifies, so a fleet
//! rotates keys without downtime (add the new key everywhere as a verifier, then make it the
//! signer everywhere, then drop the old one; docs/security.md). [`Secret`]s never print.
//!
//! ```
//! use cache_core::signing::{EventKeys, SigningKey, Verdict};
//!
//! let keys = EventKeys::new(SigningKey::new("k1", [7u8; 32]).unwrap());
//! let signed = keys.sign(br#"{"source_node":"a","event_id":"e-1"}"#);
//! assert_eq!(keys.verify(&signed), Ok(Verdict::Signed { key_id: "k1" }));
//! ```

use std::fmt;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, ErrorKind, Result};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The field a signature is written in, with its opening quote.
const SIG_FIELD: &[u8] = b",\"sig\":\"";
/// Hex digits of an HMAC-SHA256 tag.
const TAG_HEX: usize = 64;
/// The longest key id.
pub const MAX_KEY_ID: usize = 32;
/// The shortest secret accepted: a fleet key must not be guessable.
pub const MIN_SECRET_BYTES: usize = 32;
/// How far an event's timestamp may be from a receiver's clock, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Secret key material. Its `Debug` never shows it; it is wiped from no memory (the crate
/// holds no `unsafe` to do so), so keep processes that hold it trusted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// Wraps key bytes.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// Parses 64 or more hexadecimal digits (what `edge-cache keygen` prints).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for anything else; the message never contains the input.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes: Option<Vec<u8>> = text
            .len()
            .is_multiple_of(2)
            .then(|| {
                text.as_bytes()
                    .chunks_exact(2)
                    .map(|pair| {
                        let digit = |b: u8| char::from(b).to_digit(16);
                        Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
                    })
                    .collect()
            })
            .flatten();
        match bytes {
            Some(bytes) if bytes.len() >= MIN_SECRET_BYTES => Ok(Self(bytes.into())),
            _ => Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "a signing secret must be at least {} hexadecimal digits ({MIN_SECRET_BYTES} \
                     bytes); the value given is not (it is not shown)",
                    MIN_SECRET_BYTES * 2
                ),
            )),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A named key: its id travels with every signature, its secret never does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKey {
    id: String,
    secret: Secret,
}

impl SigningKey {
    /// A key named `id` (1 to [`MAX_KEY_ID`] characters of `A-Z a-z 0-9 _ - .`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for another id, or a secret shorter than [`MIN_SECRET_BYTES`].
    pub fn new(id: impl Into<String>, secret: impl Into<Box<[u8]>>) -> Result<Self> {
        let id = id.into();
        let secret = Secret::new(secret);
        let id_ok = !id.is_empty()
            && id.len() <= MAX_KEY_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !id_ok {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "key id {id:?} must be 1 to {MAX_KEY_ID} characters of A-Z, a-z, 0-9, _, - \
                     and ."
                ),
            ));
        }
        if secret.bytes().len() < MIN_SECRET_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the secret of key {id:?} has {} bytes; at least {MIN_SECRET_BYTES} are \
                     required",
                    secret.bytes().len()
                ),
            ));
        }
        Ok(Self { id, secret })
    }

    /// A key from an id and a hex secret ([`Secret::from_hex`]).
    ///
    /// # Errors
    /// As [`SigningKey::new`] and [`Secret::from_hex`].
    pub fn from_hex(id: impl Into<String>, secret_hex: &str) -> Result<Self> {
        let secret = Secret::from_hex(secret_hex)?;
        Self::new(id, secret.0)
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        <HmacSha256 as KeyInit>::new_from_slice(self.secret.bytes())
            .unwrap_or_else(|_| unreachable_hmac())
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC accepts every key length (RFC 2104): this is never reached. A zero-length key
    // keeps the signature wrong rather than panicking if it were.
    <HmacSha256 as KeyInit>::new_from_slice(&[0u8; 64]).unwrap_or_else(|_| unreachable_hmac())
}

/// Whether unsigned events are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureMode {
    /// Every event must carry a valid signature (the default whenever keys are configured).
    Require,
    /// Unsigned events are accepted (a fleet that still runs seed Python nodes, which cannot
    /// sign); a signed event must still verify. Anyone who can publish on the channel can then
    /// make nodes drop entries: see docs/security.md.
    AcceptUnsigned,
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No signature, where one is required.
    Unsigned,
    /// A signature field that is not `"<key id>:<64 hex digits>"`.
    Malformed,
    /// Signed with a key id this ring does not hold.
    UnknownKey,
    /// The MAC does not match the message.
    BadMac,
}

impl Rejection {
    /// A short name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::Malformed => "malformed signature",
            Rejection::UnknownKey => "unknown key id",
            Rejection::BadMac => "bad MAC",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`EventKeys::verify`] found acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Signed by the ring's key `key_id`, and the MAC matches.
    Signed {
        /// The key that signed it.
        key_id: &'a str,
    },
    /// Unsigned, accepted because the ring is in [`SignatureMode::AcceptUnsigned`].
    Unsigned,
}

/// A node's key ring: the key it signs with, the keys it verifies with, the mode and the
/// replay window.
#[derive(Clone, Debug)]
pub struct EventKeys {
    signer: SigningKey,
    verifiers: Vec<SigningKey>,
    mode: SignatureMode,
    window: Duration,
}

impl EventKeys {
    /// Signs with `signer`, verifies with it, requires signatures, and refuses events more
    /// than [`DEFAULT_WINDOW`] from the receiver's clock.
    pub fn new(signer: SigningKey) -> Self {
        Self {
            verifiers: vec![signer.clone()],
            signer,
            mode: SignatureMode::Require,
            window: DEFAULT_WINDOW,
        }
    }

    /// Also verifies with `key` (the next key before a rotation, or the previous one after).
    /// A key with the id of one already held replaces it.
    pub fn verify_with(mut self, key: SigningKey) -> Self {
        self.verifiers.retain(|k| k.id != key.id);
        self.verifiers.push(key);
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: SignatureMode) -> Self {
        self.mode = mode;
        self
    }

    /// How far an event's timestamp may be from the receiver's clock, and how long its id is
    /// remembered to refuse it again (default [`DEFAULT_WINDOW`]; keep it above the fleet's
    /// clock skew).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The mode.
    pub fn signature_mode(&self) -> SignatureMode {
        self.mode
    }

    /// The replay window.
    pub fn replay_window(&self) -> Duration {
        self.window
    }

    /// The id of the signing key.
    pub fn signer_id(&self) -> &str {
        &self.signer.id
    }

    /// `event` (an encoded event, ending in its closing brace) with its signature as a last
    /// field. An `event` that does not end in `}` is returned unchanged (it is no event, and
    /// receivers requiring signatures will refuse it).
    pub fn sign(&self, event: &[u8]) -> Vec<u8> {
        let Some(body) = event.strip_suffix(b"}") else {
            return event.to_vec();
        };
        let mut mac = self.signer.mac();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let mut out = Vec::with_capacity(event.len() + SIG_FIELD.len() + MAX_KEY_ID + 68);
        out.extend_from_slice(body);
        out.extend_from_slice(SIG_FIELD);
        out.extend_from_slice(self.signer.id.as_bytes());
        out.push(b':');
        for byte in tag {
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        }
        out.extend_from_slice(b"\"}");
        out
    }

    /// Checks `message` (as published, possibly with a store's `"pos"` after the signature).
    ///
    /// # Errors
    /// The [`Rejection`]; the MAC comparison takes the same time wherever it differs.
    pub fn verify(&self, message: &[u8]) -> std::result::Result<Verdict<'_>, Rejection> {
        let Some(found) = find_signature(message) else {
            return match self.mode {
                SignatureMode::AcceptUnsigned => Ok(Verdict::Unsigned),
                SignatureMode::Require => Err(Rejection::Unsigned),
            };
        };
        let (signed, key_id, tag_hex) = found?;
        let key = self
            .verifiers
            .iter()
            .find(|k| k.id.as_bytes() == key_id)
            .ok_or(Rejection::UnknownKey)?;
        let mut tag = [0u8; TAG_HEX / 2];
        for (slot, pair) in tag.iter_mut().zip(tag_hex.chunks_exact(2)) {
            let digit = |b: u8| {
                char::from(b)
                    .to_digit(16)
                    .filter(|_| !b.is_ascii_uppercase())
            };
            let (hi, lo) = (digit(pair[0]), digit(pair[1]));
            *slot = match (hi, lo) {
                (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                _ => return Err(Rejection::Malformed),
            };
        }
        let mut mac = key.mac();
        mac.update(signed);
        mac.verify_slice(&tag).map_err(|_| Rejection::BadMac)?;
        Ok(Verdict::Signed { key_id: &key.id })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The signed bytes, the key id and the tag's hex digits of a signed message; `None` when it
/// has no signature field; a [`Rejection::Malformed`] when the field is there but misshapen.
#[allow(clippy::type_complexity)]
fn find_signature(message: &[u8]) -> Option<std::result::Result<(&[u8], &[u8], &[u8]), Rejection>> {
    // The signature is the last field the signer wrote; a store may have appended `"pos"`.
    let before_pos = match crate::log::tail_start(message) {
        Some(pos_start) => message.get(..pos_start)?,
        None => message.strip_suffix(b"}")?,
    };
    // Look only near the end: an id and a tag are short, and a long message must not cost a
    // scan of all of it.
    let window_start = before_pos
        .len()
        .saturating_sub(SIG_FIELD.len() + MAX_KEY_ID + 1 + TAG_HEX + 1);
    let tail = &before_pos[window_start..];
    let at = tail
        .windows(SIG_FIELD.len())
        .rposition(|w| w == SIG_FIELD)?;
    let signed = &before_pos[..window_start + at];
    let value = &tail[at + SIG_FIELD.len()..];
    let parsed = value
        .strip_suffix(b"\"")
        .and_then(|value| {
            let colon = value.iter().rposition(|&b| b == b':')?;
            let (key_id, tag) = (&value[..colon], &value[colon + 1..]);
            (tag.len() == TAG_HEX && !key_id.is_empty() && key_id.len() <= MAX_KEY_ID)
                .then_some((signed, key_id, tag))
        })
        .ok_or(Rejection::Malformed);
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{splice_positions, LogPosition};

    fn key(id: &str, byte: u8) -> SigningKey {
        SigningKey::new(id, vec![byte; 32]).unwrap()
    }

    const EVENT: &[u8] = br#"{"source_node":"a","event_type":"booking_created","event_id":"e-1"}"#;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231 (a short key, below the 32 bytes a fleet key needs, so the
        // MAC is checked directly).
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let tag: Vec<u8> = mac.finalize().into_bytes().to_vec();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signed_event_verifies_with_and_without_positions() {
        let keys = EventKeys::new(key("k1", 1));
        let signed = keys.sign(EVENT);
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(text.starts_with(r#"{"source_node":"a","#), "{text}");
        assert!(text.contains(r#","sig":"k1:"#), "{text}");
        assert_eq!(keys.verify(&signed), Ok(Verdict::Signed { key_id: "k1" }));
        let logged = splice_positions(&signed, &[LogPosition::new("gpu_avail", 3, 9)]);
        assert_eq!(keys.verify(&logged), Ok(Verdict::Signed { key_id: "k1" }));
        // The signed event still decodes as an event.
        assert!(serde_json::from_slice::<serde_json::Value>(&logged).is_ok());
    }

    #[test]
    fn every_changed_byte_of_a_signed_event_is_refused() {
        let keys = EventKeys::new(key("k1", 1));
        let signed = keys.sign(EVENT);
        let body_len = EVENT.len() - 1;
        for at in 0..body_len {
            let mut forged = signed.clone();
            forged[at] ^= 0x01;
            assert_eq!(keys.verify(&forged), Err(Rejection::BadMac), "byte {at}");
        }
        // A flipped digit of the tag.
        let mut forged = signed.clone();
        let last_digit = forged.len() - 3;
        forged[last_digit] = if forged[last_digit] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert_eq!(keys.verify(&forged), Err(Rejection::BadMac));
    }

    #[test]
    fn unsigned_unknown_and_malformed_signatures_are_told_apart() {
        let keys = EventKeys::new(key("k1", 1));
        assert_eq!(keys.verify(EVENT), Err(Rejection::Unsigned));
        assert_eq!(
            keys.clone()
                .mode(SignatureMode::AcceptUnsigned)
                .verify(EVENT),
            Ok(Verdict::Unsigned)
        );
        let other = EventKeys::new(key("k2", 2)).sign(EVENT);
        assert_eq!(keys.verify(&other), Err(Rejection::UnknownKey));
        // The same id with another secret: a bad MAC.
        let impostor = EventKeys::new(key("k1", 9)).sign(EVENT);
        assert_eq!(keys.verify(&impostor), Err(Rejection::BadMac));
        for malformed in [
            &br#"{"a":1,"sig":"k1:abc"}"#[..],
            br#"{"a":1,"sig":"nocolon"}"#,
            br#"{"a":1,"sig":":0000000000000000000000000000000000000000000000000000000000000000"}"#,
            br#"{"a":1,"sig":"k1:000000000000000000000000000000000000000000000000000000000000000g"}"#,
            br#"{"a":1,"sig":"k1:00000000000000000000000000000000000000000000000000000000000000AA"}"#,
        ] {
            assert_eq!(
                keys.verify(malformed),
                Err(Rejection::Malformed),
                "{}",
                String::from_utf8_lossy(malformed)
            );
        }
        // Not even JSON: no signature, so unsigned.
        assert_eq!(keys.verify(b"\xff\x00garbage"), Err(Rejection::Unsigned));
        assert_eq!(keys.verify(b""), Err(Rejection::Unsigned));
    }

    #[test]
    fn a_ring_verifies_every_key_it_holds_and_signs_with_one() {
        let old = key("2026-11", 1);
        let new = key("2026-12", 2);
        let before = EventKeys::new(old.clone());
        let during = EventKeys::new(old.clone()).verify_with(new.clone());
        let after = EventKeys::new(new.clone()).verify_with(old.clone());
        let done = EventKeys::new(new);
        for (signer, verifiers) in [
            (&before, vec![&before, &during, &after]),
            (&during, vec![&before, &during, &after]),
            (&after, vec![&during, &after, &done]),
        ] {
            let signed = signer.sign(EVENT);
            for ring in verifiers {
                assert!(
                    ring.verify(&signed).is_ok(),
                    "{} by {:?}",
                    signer.signer_id(),
                    ring
                );
            }
        }
        assert_eq!(
            done.verify(&before.sign(EVENT)),
            Err(Rejection::UnknownKey),
            "a retired key no longer verifies"
        );
    }

    #[test]
    fn secrets_never_print_and_bad_keys_are_refused_without_echoing_them() {
        let k = key("k1", 0xab);
        let shown = format!("{k:?} {:?}", EventKeys::new(k.clone()));
        assert!(
            !shown.contains("171") && !shown.contains("ab, ab"),
            "{shown}"
        );
        assert!(shown.contains("redacted"), "{shown}");
        assert!(SigningKey::new("", vec![0; 32]).is_err());
        assert!(SigningKey::new("a b", vec![0; 32]).is_err());
        assert!(SigningKey::new("x".repeat(33), vec![0; 32]).is_err());
        assert!(SigningKey::new("k", vec![0; 31]).is_err());
        let err = Secret::from_hex("deadbeefdeadbeef").unwrap_err();
        assert!(!err.to_string().contains("deadbeef"), "{err}");
        let hex = "0f".repeat(32);
        assert_eq!(
            SigningKey::from_hex("k", &hex).unwrap(),
            SigningKey::new("k", vec![0x0f; 32]).unwrap()
        );
        assert!(Secret::from_hex(&"zz".repeat(32)).is_err());
    }
}
