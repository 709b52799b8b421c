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

use serde::ser::{self, Serialize};
use serde_json::{Number, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind, Result};

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

    /// The SHA-256 of `bytes`.
    fn of(bytes: &[u8]) -> Digest {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        Digest(hash)
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
    /// `params` is converted with [`serde_json::to_value`] and hashed through
    /// [`canonical_json`]. The namespace is used verbatim; validating it is the job of the
    /// namespace configuration, not of key derivation.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] if `params` cannot be represented as JSON (for example a map
    /// whose keys are not strings) or contains a NaN or infinite float. serde_json would
    /// silently turn such a float into `null`, which would give it the key of a different
    /// parameter set, so it is refused instead.
    pub fn derive<P: Serialize + ?Sized>(key_namespace: &str, params: &P) -> Result<CacheKey> {
        Ok(CacheKey::from_canonical(
            Arc::from(key_namespace),
            &params_json(params)?,
        ))
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
        Ok(CacheKey::from_canonical(
            Arc::clone(key_namespace),
            &params_json(params)?,
        ))
    }

    /// Derives the key of an already-built JSON value in `key_namespace`.
    ///
    /// This is the same derivation as [`CacheKey::derive`], for callers that hold parameters
    /// as a [`serde_json::Value`] (for example parameters received from a Python producer).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Encode`] if `params` contains a non-finite float.
    pub fn from_json(key_namespace: &str, params: &Value) -> Result<CacheKey> {
        let json = canonical_json(params)?;
        Ok(CacheKey::from_canonical(Arc::from(key_namespace), &json))
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

    fn from_canonical(key_namespace: Arc<str>, json: &str) -> CacheKey {
        let digest = Digest::of(json.as_bytes());
        let mut text = String::with_capacity(key_namespace.len() + 1 + HEX_LEN);
        text.push_str(&key_namespace);
        text.push(':');
        digest.push_hex(&mut text);
        CacheKey {
            namespace: key_namespace,
            digest,
            text: text.into_boxed_str(),
        }
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

/// The canonical JSON of `params`, refusing what would hash like something else.
fn params_json<P: Serialize + ?Sized>(params: &P) -> Result<String> {
    let value = serde_json::to_value(params).map_err(|e| {
        Error::new(
            ErrorKind::Encode,
            "cache key parameters cannot be encoded as JSON",
        )
        .with_source(e)
    })?;
    let (json, saw_null) = encode(&value)?;
    // serde_json maps non-finite floats to `null`; only then is the slower check needed.
    if saw_null {
        params.serialize(FiniteCheck).map_err(|e| {
            Error::new(
                ErrorKind::Encode,
                "cache key parameters cannot be encoded as JSON",
            )
            .with_source(e)
        })?;
    }
    Ok(json)
}

/// Python `json.dumps(value, sort_keys=True)` byte-for-byte.
///
/// Keys are sorted by code point, separators are `", "` and `": "`, every character outside
/// printable ASCII is written as a lowercase `\uXXXX` escape (astral characters as a UTF-16
/// surrogate pair), and floats use Python's `repr`. Sorting is done here rather than relying
/// on the map type, so the output does not change if serde_json's `preserve_order` feature is
/// enabled elsewhere in the build.
///
/// # Errors
///
/// [`ErrorKind::Encode`] if the value contains a NaN or infinite float, which has no JSON
/// spelling.
pub fn canonical_json(value: &Value) -> Result<String> {
    encode(value).map(|(json, _)| json)
}

/// Encodes `value` and reports whether it contains a `null`.
fn encode(value: &Value) -> Result<(String, bool)> {
    let mut writer = Writer {
        out: String::new(),
        saw_null: false,
    };
    writer.value(value)?;
    Ok((writer.out, writer.saw_null))
}

struct Writer {
    out: String,
    saw_null: bool,
}

impl Writer {
    fn value(&mut self, value: &Value) -> Result<()> {
        match value {
            Value::Null => {
                self.saw_null = true;
                self.out.push_str("null");
            }
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Number(n) => self.number(n)?,
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.value(item)?;
                }
                self.out.push(']');
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                self.out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.string(key);
                    self.out.push_str(": ");
                    self.value(item)?;
                }
                self.out.push('}');
            }
        }
        Ok(())
    }

    fn number(&mut self, n: &Number) -> Result<()> {
        if let Some(u) = n.as_u64() {
            self.out.push_str(&u.to_string());
        } else if let Some(i) = n.as_i64() {
            self.out.push_str(&i.to_string());
        } else if let Some(f) = n.as_f64() {
            push_python_float(f, &mut self.out)?;
        } else {
            return Err(Error::new(
                ErrorKind::Encode,
                format!("number {n} has no JSON form"),
            ));
        }
        Ok(())
    }

    /// A JSON string with Python's `ensure_ascii=True` escaping.
    fn string(&mut self, s: &str) {
        let out = &mut self.out;
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                ' '..='~' => out.push(c),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        push_unicode_escape(*unit, out);
                    }
                }
            }
        }
        out.push('"');
    }
}

/// `\uXXXX` with four lowercase hexadecimal digits.
fn push_unicode_escape(unit: u16, out: &mut String) {
    out.push_str("\\u");
    for shift in [12u16, 8, 4, 0] {
        out.push(char::from(HEX_DIGITS[usize::from((unit >> shift) & 0x0f)]));
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents
/// in `-4..16` (always with a fractional part), scientific notation with a signed exponent of
/// at least two digits otherwise.
fn push_python_float(f: f64, out: &mut String) -> Result<()> {
    if !f.is_finite() {
        return Err(Error::new(
            ErrorKind::Encode,
            format!("float {f} has no JSON form; cache key parameters must be finite"),
        ));
    }
    // `{:e}` gives the shortest digits that round-trip, e.g. `-1.5e-5`, `1e16`, `-0e0`.
    let sci = format!("{f:e}");
    let (negative, digits, exp) = sci_parts(&sci).ok_or_else(|| float_format_error(&sci))?;
    let (digits, exp) = break_tie_to_even(f.abs(), digits, exp);

    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            // Lossless: 0 <= exp < 16.
            let int_len = exp.unsigned_abs() as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                let (int_part, frac_part) = digits.split_at(int_len);
                out.push_str(int_part);
                out.push('.');
                out.push_str(frac_part);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', exp.unsigned_abs() as usize - 1));
            out.push_str(&digits);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        out.push_str(&magnitude.to_string());
    }
    Ok(())
}

/// Splits Rust's `{:e}` output (`-1.25e-7`, `3e0`, `1.500e2`) into sign, significant digits
/// and decimal exponent.
fn sci_parts(sci: &str) -> Option<(bool, String, i32)> {
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((negative, digits, exp))
}

/// Applies CPython's tie rule to Rust's shortest digits of the finite, non-negative `abs`.
///
/// Both pick the shortest digit string that round-trips and, among those, the one nearest the
/// exact binary value. When the exact value lies exactly halfway between two such strings
/// (e.g. `1059438285926254.25`), Rust rounds up but CPython (David Gay's `dtoa`) rounds to
/// the even last digit (`1059438285926254.2`). This detects that case and returns Python's
/// choice; otherwise the digits are returned unchanged.
fn break_tie_to_even(abs: f64, digits: String, exp: i32) -> (String, i32) {
    let n = digits.len();
    let odd = digits.as_bytes().last().is_some_and(|d| d % 2 == 1);
    if !odd {
        return (digits, exp);
    }
    // Cheap filter: a tie is exactly the shortest digits' neighbourhood midpoint, `...5` in the
    // next place, so the value rounded to three more digits must end in `500`.
    let probe = format!("{abs:.prec$e}", prec = n + 2);
    let Some((_, probe_digits, probe_exp)) = sci_parts(&probe) else {
        return (digits, exp);
    };
    if probe_exp != exp || !probe_digits.ends_with("500") {
        return (digits, exp);
    }
    let Some(midpoint) = probe_digits.get(..=n) else {
        return (digits, exp);
    };
    // Exact check: an f64's decimal expansion has at most 767 significant digits.
    let exact = format!("{abs:.767e}");
    let Some((_, exact_digits, exact_exp)) = sci_parts(&exact) else {
        return (digits, exp);
    };
    if exact_exp != exp || exact_digits.trim_end_matches('0') != midpoint {
        return (digits, exp);
    }
    let Some(stem) = midpoint.get(..n) else {
        return (digits, exp);
    };
    let neighbour = if stem == digits {
        increment_digits(&digits, exp)
    } else {
        let mut lower = digits.clone().into_bytes();
        if let Some(last) = lower.last_mut() {
            *last -= 1; // odd, so at least b'1'
        }
        if lower != stem.as_bytes() {
            return (digits, exp);
        }
        (stem.to_owned(), exp)
    };
    let (mut n_digits, n_exp) = neighbour;
    let round_trips = format!("0.{n_digits}e{}", n_exp + 1).parse::<f64>() == Ok(abs);
    if !round_trips {
        return (digits, exp);
    }
    let trimmed_len = n_digits.trim_end_matches('0').len().max(1);
    n_digits.truncate(trimmed_len);
    (n_digits, n_exp)
}

/// `digits × 10^exp` plus one unit in the last digit, carrying into a new leading digit.
fn increment_digits(digits: &str, exp: i32) -> (String, i32) {
    let mut bytes = digits.as_bytes().to_vec();
    for b in bytes.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return (String::from_utf8_lossy(&bytes).into_owned(), exp);
        }
    }
    bytes.insert(0, b'1');
    (String::from_utf8_lossy(&bytes).into_owned(), exp + 1)
}

fn float_format_error(sci: &str) -> Error {
    Error::new(
        ErrorKind::Encode,
        format!("unexpected float formatting {sci:?}"),
    )
}

/// Why [`FiniteCheck`] rejected a parameter set.
#[derive(Debug)]
enum CheckError {
    NonFinite,
    Custom(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NonFinite => f.write_str(
                "parameters contain a NaN or infinite float, which JSON cannot represent",
            ),
            CheckError::Custom(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CheckError {}

impl ser::Error for CheckError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CheckError::Custom(msg.to_string())
    }
}

/// A serializer that produces nothing and fails on the first non-finite float.
///
/// serde_json's value serializer replaces NaN and infinities with `null`, so this pass is the
/// only way to tell `f64::NAN` from `None` in the parameters.
#[derive(Clone, Copy)]
struct FiniteCheck;

type CheckResult = std::result::Result<(), CheckError>;

impl ser::Serializer for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> CheckResult {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> CheckResult {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> CheckResult {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> CheckResult {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> CheckResult {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> CheckResult {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> CheckResult {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> CheckResult {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> CheckResult {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> CheckResult {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> CheckResult {
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> CheckResult {
        if v.is_finite() {
            Ok(())
        } else {
            Err(CheckError::NonFinite)
        }
    }
    fn serialize_f64(self, v: f64) -> CheckResult {
        if v.is_finite() {
            Ok(())
        } else {
            Err(CheckError::NonFinite)
        }
    }
    fn serialize_char(self, _: char) -> CheckResult {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> CheckResult {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> CheckResult {
        Ok(())
    }
    fn serialize_none(self) -> CheckResult {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_unit(self) -> CheckResult {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> CheckResult {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> CheckResult {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, CheckError> {
        Ok(self)
    }
}

impl ser::SerializeSeq for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTuple for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeMap for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> CheckResult {
        key.serialize(*self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeStruct for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
}

impl ser::SerializeStructVariant for FiniteCheck {
    type Ok = ();
    type Error = CheckError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> CheckResult {
        value.serialize(*self)
    }
    fn end(self) -> CheckResult {
        Ok(())
    }
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
}
