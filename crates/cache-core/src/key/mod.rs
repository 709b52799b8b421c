//! Cache key derivation, byte-compatible with the Python seed.
//!
//! The Python implementation derives a key as
//! `f"{namespace}:{sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()}"`.
//! Rust and Python processes share one L2 store, so both must produce the same key for the
//! same parameters; [`canonical_json`] therefore reproduces CPython's `json.dumps` output
//! byte for byte (sorted keys, `", "` / `": "` separators, `ensure_ascii`, Python float
//! `repr`), and [`CacheKey`] hashes exactly those bytes.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

mod finite;
mod float;
mod json;

use finite::FiniteCheck;
use json::Stop;

/// Number of hexadecimal characters in the text form of a [`Digest`].
const HEX_LEN: usize = 64;

/// Lowercase hexadecimal alphabet, the only one Python's `hexdigest()` produces.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// 32-byte SHA-256 of the canonical parameter JSON.
///
/// Its only text form is 64 lowercase hexadecimal digits, as Python's `hexdigest()` writes it,
/// so that a key has exactly one spelling in the shared store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// A SHA-256 digest is already uniformly distributed: hashing its first eight bytes is as good
/// as hashing all 32, and cheaper on the L1 hit path (equality still compares all 32).
impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

impl Digest {
    /// The 64 lowercase hexadecimal digits of the digest, as Python's `hexdigest()` writes them.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(HEX_LEN);
        self.push_hex(&mut out);
        out
    }

    /// Parses exactly 64 lowercase hexadecimal digits; anything else is `None`.
    ///
    /// Uppercase digits are rejected because they are not the canonical spelling: accepting
    /// them would let two different strings name the same stored entry.
    pub fn from_hex(s: &str) -> Option<Digest> {
        let bytes = s.as_bytes();
        if bytes.len() != HEX_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (&hi, &lo) = (pair.first()?, pair.get(1)?);
            *slot = (hex_value(hi)? << 4) | hex_value(lo)?;
        }
        Some(Digest(out))
    }

    /// The digest of `params`' canonical JSON ([`canonical_json`]): what names a parameter set
    /// within its namespace. A node's L1 is keyed by it, so a read needs no key text.
    ///
    /// # Errors
    /// As [`CacheKey::derive`].
    pub fn of_params<P: Serialize + ?Sized>(params: &P) -> Result<Digest> {
        canonical(params, usize::MAX, Digest::of_padded)
    }

    /// [`Digest::of_params`] of parameters at most `max_bytes` long as canonical JSON; longer
    /// ones are refused before the encoder's buffer grows much past the bound.
    ///
    /// # Errors
    /// [`ErrorKind::LimitExceeded`] over the bound; otherwise as [`CacheKey::derive`].
    pub fn of_params_within<P: Serialize + ?Sized>(params: &P, max_bytes: usize) -> Result<Digest> {
        canonical(params, max_bytes, Digest::of_padded)
    }

    /// The SHA-256 of `message`, padded in place and hashed block by block: the canonical JSON
    /// is already in a buffer of its own, so the hasher's own buffering would be a second copy.
    /// (Parameters fit one block; on this hot path the copy and the bookkeeping cost about a
    /// third as much as the block itself.)
    fn of_padded(message: &mut Vec<u8>) -> Digest {
        /// FIPS 180-4, 5.3.3.
        const INITIAL: [u32; 8] = [
            0x6a09_e667,
            0xbb67_ae85,
            0x3c6e_f372,
            0xa54f_f53a,
            0x510e_527f,
            0x9b05_688c,
            0x1f83_d9ab,
            0x5be0_cd19,
        ];
        let len = message.len();
        let bits = (len as u64).wrapping_mul(8);
        let mut state = INITIAL;
        if len < 56 {
            // One block (nearly every parameter set): padded on the stack.
            let mut block = [0u8; 64];
            block[..len].copy_from_slice(message);
            block[len] = 0x80;
            block[56..].copy_from_slice(&bits.to_be_bytes());
            sha2::block_api::compress256(&mut state, &[block]);
        } else {
            message.push(0x80);
            let padded = (message.len() + 8).next_multiple_of(64);
            message.resize(padded - 8, 0);
            message.extend_from_slice(&bits.to_be_bytes());
            let (blocks, _) = message.as_chunks::<64>();
            sha2::block_api::compress256(&mut state, blocks);
        }
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        Digest(out)
    }

    /// Appends the 64 lowercase hex digits to `out` (no allocation when it has room).
    pub fn push_hex(&self, out: &mut String) {
        for &byte in &self.0 {
            out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
    }
}

/// The value of one lowercase hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// A derived key: `key_namespace:hex`.
///
/// The text is built once at derivation so that lookups in L1 and L2 use it without
/// reformatting; the namespace and digest stay available for invalidation and metrics.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Shared with every key of the namespace derived through [`CacheKey::derive_in`], so the
    /// hit path reads a string that is already in cache instead of this key's own text.
    namespace: Arc<str>,
    digest: Digest,
    text: Box<str>,
}

impl CacheKey {
    /// Derives the key of `params` in `key_namespace`, as the Python seed does.
    ///
    /// `params` is written as canonical JSON ([`canonical_json`]) straight into one reused
    /// buffer and hashed. The namespace is used verbatim; validating it is the job of the
    /// namespace configuration, not of key derivation.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] if `params` cannot be represented as JSON (for example a map
    /// whose keys are not strings) or contains a NaN or infinite float. serde_json would
    /// silently turn such a float into `null`, which would give it the key of a different
    /// parameter set, so it is refused instead.
    pub fn derive<P: Serialize + ?Sized>(key_namespace: &str, params: &P) -> Result<CacheKey> {
        CacheKey::derive_in(&Arc::from(key_namespace), params)
    }

    /// [`CacheKey::derive`] sharing `key_namespace`'s allocation with the new key. Callers that
    /// derive many keys of one namespace (a node does) pass the same `Arc` every time.
    ///
    /// # Errors
    /// As [`CacheKey::derive`].
    pub fn derive_in<P: Serialize + ?Sized>(
        key_namespace: &Arc<str>,
        params: &P,
    ) -> Result<CacheKey> {
        Ok(CacheKey::from_digest(
            key_namespace,
            Digest::of_params(params)?,
        ))
    }

    /// Derives the key of an already-built JSON value in `key_namespace`.
    ///
    /// The same derivation as [`CacheKey::derive`], kept for callers that hold parameters as a
    /// [`serde_json::Value`] (for example parameters received from a Python producer).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] if `params` contains a non-finite float.
    pub fn from_json(key_namespace: &str, params: &Value) -> Result<CacheKey> {
        CacheKey::derive(key_namespace, params)
    }

    /// The key of the parameters whose digest is `digest` ([`Digest::of_params`]), in
    /// `key_namespace`, sharing its allocation.
    pub fn from_digest(key_namespace: &Arc<str>, digest: Digest) -> CacheKey {
        let mut text = String::with_capacity(key_namespace.len() + 1 + HEX_LEN);
        text.push_str(key_namespace);
        text.push(':');
        digest.push_hex(&mut text);
        CacheKey {
            namespace: Arc::clone(key_namespace),
            digest,
            text: text.into_boxed_str(),
        }
    }

    /// Parses a key in its text form `namespace:hex`, as stored in L2 or carried in events.
    ///
    /// Returns `None` unless the namespace is non-empty and contains no `:`, and the part
    /// after the colon is exactly 64 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Option<CacheKey> {
        let (ns, hex) = text.split_once(':')?;
        if ns.is_empty() {
            return None;
        }
        let digest = Digest::from_hex(hex)?;
        Some(CacheKey {
            namespace: Arc::from(ns),
            digest,
            text: text.into(),
        })
    }

    /// The full key, `namespace:hex`, exactly as the Python seed writes it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The namespace part of the key, before the first `:` written by derivation.
    pub fn key_namespace(&self) -> &str {
        &self.namespace
    }

    /// The namespace part as the shared string it was derived with (see
    /// [`CacheKey::derive_in`]): equal pointers mean equal namespaces.
    pub fn key_namespace_shared(&self) -> &Arc<str> {
        &self.namespace
    }

    /// The SHA-256 of the canonical parameter JSON.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&self.as_str()).finish()
    }
}

/// Runs `f` on the canonical JSON of `params`.
///
/// The streaming encoder ([`json`]) writes nearly every parameter set itself. What it leaves
/// to serde_json (see its module docs) goes through [`serde_json::to_value`] and is encoded
/// from the value, so it keeps exactly the key, or the error, it always had.
fn canonical<P, R>(params: &P, limit: usize, f: impl Fn(&mut Vec<u8>) -> R) -> Result<R>
where
    P: Serialize + ?Sized,
{
    match json::with_canonical(params, limit, &f) {
        Ok(result) => Ok(result),
        Err(Stop::NonFinite(x)) => Err(non_finite(x)),
        Err(Stop::TooLarge(limit)) => Err(too_large(limit)),
        Err(Stop::Unsupported) => {
            // serde_json's conversion turns NaN and infinities into `null`, which would give
            // them the key of a different parameter set: look for them first.
            params.serialize(FiniteCheck).map_err(encode_error)?;
            let value = serde_json::to_value(params).map_err(encode_error)?;
            json::with_canonical(&value, limit, &f).map_err(|stop| match stop {
                Stop::TooLarge(limit) => too_large(limit),
                other => encode_error(other),
            })
        }
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!("cache key parameters are over {limit} bytes as canonical JSON"),
    )
}

fn encode_error(source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(
        ErrorKind::Encode,
        "cache key parameters cannot be encoded as JSON",
    )
    .with_source(source)
}

fn non_finite(x: f64) -> Error {
    Error::new(
        ErrorKind::Encode,
        format!("float {x} has no JSON form; cache key parameters must be finite"),
    )
}

/// Python `json.dumps(params, sort_keys=True)` byte-for-byte, for any [`Serialize`] value
/// (a [`serde_json::Value`], a struct, a map).
///
/// Keys are sorted by code point, separators are `", "` and `": "`, every character outside
/// printable ASCII is written as a lowercase `\uXXXX` escape (astral characters as a UTF-16
/// surrogate pair), and floats use Python's `repr`. Sorting is done here rather than relying
/// on the map type, so the output does not change if serde_json's `preserve_order` feature is
/// enabled elsewhere in the build. Equal keys (a struct with a flattened map, say) keep the
/// last value, as `serde_json::to_value` does.
///
/// # Errors
///
/// [`ErrorKind::Encode`] if the value contains a NaN or infinite float, which has no JSON
/// spelling, or cannot be represented as JSON (a map whose keys are not strings).
pub fn canonical_json<P: Serialize + ?Sized>(params: &P) -> Result<String> {
    // The encoder writes ASCII only (`ensure_ascii`).
    canonical(params, usize::MAX, |json| {
        String::from_utf8_lossy(json).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// Asserts both the canonical JSON and the full key against Python 3.11 output.
    ///
    /// Expected values were produced with
    /// `s = json.dumps(params, sort_keys=True); f"{ns}:{hashlib.sha256(s.encode()).hexdigest()}"`.
    fn check(ns: &str, params: &Value, python_json: &str, python_key: &str) {
        assert_eq!(canonical_json(params).expect("encodes"), python_json);
        let key = CacheKey::from_json(ns, params).expect("derives");
        assert_eq!(key.as_str(), python_key);
        let via_serde = CacheKey::derive(ns, params).expect("derives");
        assert_eq!(via_serde, key);
        assert_eq!(key.key_namespace(), ns);
        assert_eq!(CacheKey::parse(python_key), Some(key));
    }

    #[test]
    fn simple_dict_matches_python() {
        check(
            "gpu",
            &json!({"gpu_id": "g-42"}),
            r#"{"gpu_id": "g-42"}"#,
            "gpu:a1dd3db51a6b4be4bab466599bc498df43ec6a36affa425f1e025a0e448f504c",
        );
    }

    #[test]
    fn nested_unsorted_dicts_and_arrays_match_python() {
        check(
            "ns",
            &json!({"z": [3, {"b": 1, "a": [true, null]}], "a": {"y": "x", "b": {}}, "m": []}),
            r#"{"a": {"b": {}, "y": "x"}, "m": [], "z": [3, {"a": [true, null], "b": 1}]}"#,
            "ns:ec1736d0657e3082a3ca0202dc8cc089ee5c9ea9a3f1c86bb890ffe42b859811",
        );
    }

    #[test]
    fn unicode_is_escaped_and_keys_sort_by_code_point() {
        // U+FF61 sorts before U+1F600 by code point, although its UTF-16 unit is larger.
        check(
            "ns",
            &json!({
                "name": "caf\u{e9} \u{4e2d}\u{6587} \u{1f600}",
                "\u{e9}": 1,
                "e": 2,
                "\u{1f600}": "emoji-key",
                "\u{ff61}": "halfwidth",
            }),
            r#"{"e": 2, "name": "caf\u00e9 \u4e2d\u6587 \ud83d\ude00", "\u00e9": 1, "\uff61": "halfwidth", "\ud83d\ude00": "emoji-key"}"#,
            "ns:5c7c1cd73eaf583531ea22549d0ea82618fb5865e0c21c364c42701bbc54bf67",
        );
    }

    #[test]
    fn control_chars_quotes_backslash_and_del_match_python() {
        check(
            "ns",
            &json!({"s": "q\"b\\n\nr\rt\tb\u{8}f\u{c}\u{0}\u{1}\u{1f}\u{7f}/ "}),
            r#"{"s": "q\"b\\n\nr\rt\tb\bf\f\u0000\u0001\u001f\u007f/ "}"#,
            "ns:8c93dab8170d1a03ee7003feec1b6faed389626166dc44afe270aa7346e5f5cd",
        );
    }

    #[test]
    fn integers_match_python() {
        check(
            "ns",
            &json!({"neg": -42, "zero": 0, "big": u64::MAX, "min": i64::MIN}),
            r#"{"big": 18446744073709551615, "min": -9223372036854775808, "neg": -42, "zero": 0}"#,
            "ns:4f7c046d94a4f362f404b02b70b234a10a813de8c5fbce75cf2ed10fee58fb13",
        );
    }

    #[test]
    fn bools_and_null_match_python() {
        check(
            "ns",
            &json!({"t": true, "f": false, "n": null}),
            r#"{"f": false, "n": null, "t": true}"#,
            "ns:f555ff7fdba4f36070eecba4785bec7202ddba683c26ac7d346fe6d88addca9c",
        );
    }

    #[test]
    fn empty_dict_matches_python() {
        check(
            "ns",
            &json!({}),
            "{}",
            "ns:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        );
    }

    #[test]
    #[allow(
        clippy::approx_constant,
        reason = "3.14159 is a Python test vector, not pi"
    )]
    fn floats_match_python() {
        check(
            "ns",
            &json!({
                "a": 1.0, "b": 0.1, "c": 1e16, "d": 1.5e-05, "e": -0.0,
                "f": 123456789.125, "g": 1e-07, "h": 1e22, "i": 3.14159,
            }),
            r#"{"a": 1.0, "b": 0.1, "c": 1e+16, "d": 1.5e-05, "e": -0.0, "f": 123456789.125, "g": 1e-07, "h": 1e+22, "i": 3.14159}"#,
            "ns:b6d37041683ba4f608c618cfbcf90c10834e633d13ccc4ca7a0e689e96de376c",
        );
    }

    #[test]
    fn top_level_array_matches_python() {
        check(
            "ns",
            &json!([1, "two", 3.5, null, {"k": "v"}]),
            r#"[1, "two", 3.5, null, {"k": "v"}]"#,
            "ns:b21f4d8ad97cbe50c635e24a220d4376cbf027971a2a0fbb036dd40718362e11",
        );
    }

    #[test]
    #[allow(
        clippy::approx_constant,
        reason = "3.14159 is a Python test vector, not pi"
    )]
    fn float_repr_matches_python_at_the_boundaries() {
        // (value, Python 3.11 `json.dumps(value)`)
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00025, "0.00025"),
            (0.00012345, "0.00012345"),
            (1e-05, "1e-05"),
            (1.5e-05, "1.5e-05"),
            (1e-07, "1e-07"),
            (123456789.125, "123456789.125"),
            (123456789012345.0, "123456789012345.0"),
            (1e15, "1000000000000000.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1e22, "1e+22"),
            (1.2345e20, "1.2345e+20"),
            (3.14159, "3.14159"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-1.5e300, "-1.5e+300"),
        ];
        for &(f, python) in cases {
            assert_eq!(canonical_json(&json!(f)).expect("finite"), python, "{f:e}");
        }
    }

    #[test]
    #[allow(
        clippy::excessive_precision,
        reason = "the literals spell the exact binary values"
    )]
    fn exact_ties_round_to_even_like_python() {
        // Each value lies exactly halfway between its two shortest round-tripping spellings;
        // Rust's `{:e}` rounds such ties up, CPython picks the even last digit.
        let cases: &[(f64, &str)] = &[
            (1_059_438_285_926_254.25, "1059438285926254.2"),
            (2.980_232_238_769_531_25e-8, "2.9802322387695312e-08"), // 2^-25
            (0.000_128_269_195_556_640_625, "0.00012826919555664062"),
            (-26.362_808_227_539_062_5, "-26.362808227539062"),
            (10_144.282_592_773_437_5, "10144.282592773438"),
        ];
        for &(f, python) in cases {
            assert_eq!(canonical_json(&json!(f)).expect("finite"), python, "{f:e}");
        }
    }

    #[test]
    fn serde_structs_derive_like_their_json() {
        #[derive(serde::Serialize)]
        struct Params {
            z_last: u32,
            a_first: (f64, &'static str),
            m: BTreeMap<&'static str, Option<bool>>,
        }
        let params = Params {
            z_last: 1,
            a_first: (1.5, "x"),
            m: BTreeMap::from([("y", Some(true)), ("b", None)]),
        };
        let key = CacheKey::derive("ns", &params).expect("derives");
        assert_eq!(
            key.as_str(),
            "ns:3938210566fdb161817fa2ebf1ab244a0f215f160219c31086be8be2d9c5d43b"
        );
    }

    #[test]
    fn non_finite_floats_are_refused_not_turned_into_null() {
        for params in [vec![Some(f64::NAN)], vec![None, Some(f64::INFINITY)]] {
            let err = CacheKey::derive("ns", &params).expect_err("non-finite");
            assert_eq!(err.kind(), ErrorKind::Encode);
        }
        let err = CacheKey::derive("ns", &BTreeMap::from([("x", f32::NEG_INFINITY)]))
            .expect_err("non-finite");
        assert_eq!(err.kind(), ErrorKind::Encode);
        // A real null still derives.
        assert!(CacheKey::derive("ns", &vec![None::<f64>]).is_ok());
    }

    #[test]
    fn unencodable_params_are_encode_errors() {
        let params = BTreeMap::from([((1, 2), "tuple keys are not JSON")]);
        let err = CacheKey::derive("ns", &params).expect_err("non-string key");
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn namespace_is_used_verbatim() {
        let key = CacheKey::derive("odd ns:x", &json!({})).expect("derives");
        assert_eq!(key.key_namespace(), "odd ns:x");
        assert!(key.as_str().starts_with("odd ns:x:"));
        assert_eq!(CacheKey::parse(key.as_str()), None);
    }

    #[test]
    fn parse_round_trips_and_exposes_parts() {
        let text = "gpu:a1dd3db51a6b4be4bab466599bc498df43ec6a36affa425f1e025a0e448f504c";
        let key = CacheKey::parse(text).expect("valid");
        assert_eq!(key.as_str(), text);
        assert_eq!(key.to_string(), text);
        assert_eq!(key.key_namespace(), "gpu");
        assert_eq!(key.digest().to_hex(), &text[4..]);
        assert_eq!(format!("{key:?}"), format!("CacheKey({text:?})"));
        assert_eq!(CacheKey::parse(&key.to_string()), Some(key));
    }

    #[test]
    fn parse_rejects_malformed_keys() {
        let hex = "a1dd3db51a6b4be4bab466599bc498df43ec6a36affa425f1e025a0e448f504c";
        for bad in [
            hex.to_owned(),                        // no colon
            format!(":{hex}"),                     // empty namespace
            format!("gpu:{}", &hex[..63]),         // too short
            format!("gpu:{hex}0"),                 // too long
            format!("gpu:{}", hex.to_uppercase()), // uppercase
            format!("gpu:{}g", &hex[..63]),        // not hex
            format!("a:b:{hex}"),                  // colon inside namespace
            String::new(),
        ] {
            assert_eq!(CacheKey::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn digest_hex_round_trips() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0x0f);
        }
        let digest = Digest(bytes);
        let hex = digest.to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(&hex[..4], "0f34");
        assert_eq!(Digest::from_hex(&hex), Some(digest));
        assert_eq!(digest.to_string(), hex);
        assert_eq!(format!("{digest:?}"), format!("Digest({hex})"));
        assert_eq!(Digest([0; 32]).to_hex(), "0".repeat(64));
        assert_eq!(Digest([0xff; 32]).to_hex(), "f".repeat(64));
        assert_eq!(Digest::from_hex(&hex.to_uppercase()), None);
        assert_eq!(Digest::from_hex(&hex[..62]), None);
        assert_eq!(Digest::from_hex(&format!("{hex}00")), None);
        assert_eq!(Digest::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn digest_is_sha256_of_canonical_json() {
        // Python: hashlib.sha256(b"{}").hexdigest()
        let key = CacheKey::from_json("ns", &json!({})).expect("derives");
        assert_eq!(
            key.digest().to_hex(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn derive_in_shares_the_namespace_and_derives_the_same_key() {
        let ns: Arc<str> = Arc::from("gpu_avail");
        let params = serde_json::json!({"gpu_id": "g-42"});
        let shared = CacheKey::derive_in(&ns, &params).unwrap();
        assert_eq!(shared, CacheKey::derive("gpu_avail", &params).unwrap());
        assert!(Arc::ptr_eq(shared.key_namespace_shared(), &ns));
        assert_eq!(CacheKey::parse(shared.as_str()).unwrap(), shared);
    }

    /// The streaming encoder against the serde_json value it replaced: `to_value`, whose maps
    /// are sorted, then encoded.
    fn same_as_through_a_value<P: Serialize>(params: &P) -> String {
        let streamed = canonical_json(params).expect("encodes");
        let value = serde_json::to_value(params).expect("converts");
        assert_eq!(streamed, canonical_json(&value).expect("encodes"));
        assert_eq!(
            CacheKey::derive("ns", params).unwrap(),
            CacheKey::from_json("ns", &value).unwrap()
        );
        streamed
    }

    #[test]
    fn struct_fields_out_of_order_are_sorted() {
        #[derive(serde::Serialize)]
        struct Params {
            zone: &'static str,
            gpu: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            absent: Option<u8>,
            b: Inner,
        }
        #[derive(serde::Serialize)]
        struct Inner {
            y: bool,
            x: (),
        }
        let json = same_as_through_a_value(&Params {
            zone: "eu",
            gpu: 7,
            absent: None,
            b: Inner { y: true, x: () },
        });
        assert_eq!(
            json,
            r#"{"b": {"x": null, "y": true}, "gpu": 7, "zone": "eu"}"#
        );
    }

    #[test]
    fn hash_maps_and_non_string_keys_follow_serde_json() {
        let hashed: std::collections::HashMap<String, u32> =
            (0..50).map(|i| (format!("k{i}"), i)).collect();
        same_as_through_a_value(&hashed);
        let ints = BTreeMap::from([(10, "ten"), (-2, "minus two"), (9, "nine")]);
        assert_eq!(
            same_as_through_a_value(&ints),
            r#"{"-2": "minus two", "10": "ten", "9": "nine"}"#
        );
        same_as_through_a_value(&BTreeMap::from([(true, 1), (false, 0)]));
        same_as_through_a_value(&BTreeMap::from([('\u{e9}', 1), ('z', 2)]));
        same_as_through_a_value(&serde_json::to_value(BTreeMap::from([(1u8, 0)])).unwrap());
    }

    #[test]
    fn float_map_keys_derive_as_serde_json_spells_them() {
        struct FloatKeys;
        impl serde::Serialize for FloatKeys {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry(&2.5_f64, "b")?;
                map.serialize_entry(&1e16_f64, "a")?;
                map.end()
            }
        }
        let json = same_as_through_a_value(&FloatKeys);
        assert!(json.starts_with(r#"{"1"#), "{json}");
    }

    #[test]
    fn equal_keys_keep_the_last_value_like_serde_json() {
        struct Twice;
        impl serde::Serialize for Twice {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("b", &1)?;
                map.serialize_entry("a", &2)?;
                map.serialize_entry("b", &3)?;
                map.serialize_entry("a", &4)?;
                map.serialize_entry("c", &[5])?;
                map.end()
            }
        }
        assert_eq!(
            same_as_through_a_value(&Twice),
            r#"{"a": 4, "b": 3, "c": [5]}"#
        );
    }

    #[test]
    fn enums_tuples_bytes_and_wide_integers_follow_serde_json() {
        #[derive(serde::Serialize)]
        enum Shape {
            Unit,
            New(u8),
            Tuple(i8, &'static str),
            Struct { z: f32, a: Option<char> },
        }
        #[derive(serde::Serialize)]
        struct Wrapper(Shape);
        #[derive(serde::Serialize)]
        struct Unit;
        let json = same_as_through_a_value(&(
            Shape::Unit,
            Shape::New(1),
            Shape::Tuple(-1, "t"),
            Shape::Struct {
                z: 0.1,
                a: Some('\u{1f600}'),
            },
            Wrapper(Shape::Unit),
            Unit,
            serde_bytes_like(&[0, 255]),
            (u128::from(u64::MAX), i128::from(i64::MIN)),
        ));
        assert_eq!(
            json,
            r#"["Unit", {"New": 1}, {"Tuple": [-1, "t"]}, {"Struct": {"a": "\ud83d\ude00", "z": 0.10000000149011612}}, "Unit", null, [0, 255], [18446744073709551615, -9223372036854775808]]"#
        );
        let err = CacheKey::derive("ns", &u128::MAX).expect_err("beyond 64 bits");
        assert_eq!(err.kind(), ErrorKind::Encode);
        let err = CacheKey::derive("ns", &i128::MIN).expect_err("beyond 64 bits");
        assert_eq!(err.kind(), ErrorKind::Encode);
    }

    /// Bytes serialized as bytes (what `serde_bytes` does), not as a sequence.
    fn serde_bytes_like(bytes: &'static [u8]) -> impl Serialize {
        struct Bytes(&'static [u8]);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        Bytes(bytes)
    }

    #[test]
    fn a_serialize_that_derives_a_key_itself_gets_its_own_buffers() {
        struct Nested;
        impl serde::Serialize for Nested {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let inner = CacheKey::derive("inner", &json!({"b": 1, "a": [2]}))
                    .map_err(serde::ser::Error::custom)?;
                s.serialize_str(inner.as_str())
            }
        }
        let expected = CacheKey::derive("inner", &json!({"a": [2], "b": 1})).unwrap();
        assert_eq!(
            canonical_json(&[Nested]).unwrap(),
            format!("[\"{}\"]", expected.as_str())
        );
    }

    #[test]
    fn errors_raised_by_a_serialize_impl_are_encode_errors_with_their_message() {
        struct Refuses;
        impl serde::Serialize for Refuses {
            fn serialize<S: serde::Serializer>(
                &self,
                _: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no key for you"))
            }
        }
        let err = CacheKey::derive("ns", &vec![Refuses]).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Encode);
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.to_string().contains("no key for you"), "{source}");
    }

    #[test]
    fn a_huge_parameter_set_then_a_small_one_derive_correctly() {
        let huge: Vec<String> = (0..20_000).map(|i| format!("value-{i}")).collect();
        same_as_through_a_value(&huge);
        check(
            "gpu",
            &json!({"gpu_id": "g-42"}),
            r#"{"gpu_id": "g-42"}"#,
            "gpu:a1dd3db51a6b4be4bab466599bc498df43ec6a36affa425f1e025a0e448f504c",
        );
    }

    #[test]
    fn digest_of_params_is_the_key_digest() {
        let params = json!({"gpu_id": "g-42"});
        let digest = Digest::of_params(&params).unwrap();
        let ns: Arc<str> = Arc::from("gpu");
        let key = CacheKey::from_digest(&ns, digest);
        assert_eq!(key, CacheKey::derive("gpu", &params).unwrap());
        assert!(Arc::ptr_eq(key.key_namespace_shared(), &ns));
    }

    #[test]
    fn padded_sha256_is_sha256_at_every_length_around_the_block_edges() {
        use sha2::{Digest as _, Sha256};
        for len in 0..300 {
            let message: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let expected: [u8; 32] = Sha256::digest(&message).into();
            let mut buffer = message.clone();
            assert_eq!(
                Digest::of_padded(&mut buffer),
                Digest(expected),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn parameters_over_the_bound_are_refused_before_the_buffer_grows() {
        let long = "x".repeat(10_000);
        let err = Digest::of_params_within(&json!({"id": long}), 4_096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        let many: Vec<u32> = (0..10_000).collect();
        let err = Digest::of_params_within(&many, 4_096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        // At the bound exactly, the same digest as without one.
        let params = json!({"gpu_id": "g-42"});
        let exact = canonical_json(&params).unwrap().len();
        assert_eq!(
            Digest::of_params_within(&params, exact).unwrap(),
            Digest::of_params(&params).unwrap()
        );
        assert!(Digest::of_params_within(&params, exact - 1).is_err());
        // Through the fallback path too (a float map key).
        let float_keys = std::collections::BTreeMap::from([(1u8, "y".repeat(100))]);
        assert!(Digest::of_params_within(&float_keys, 50).is_err());
    }
}
