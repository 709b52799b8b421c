//! Python's `json.dumps(params, sort_keys=True)`, written straight from any [`Serialize`] value
//! into one buffer per thread, reused from call to call.
//!
//! There is no intermediate `serde_json::Value` and, once a thread's buffers have grown to the
//! size of its parameters, no allocation. Objects are written in the order their entries
//! arrive; only an object whose keys did not arrive sorted (a struct whose fields are not
//! declared in order, a `HashMap`) is rearranged, in place, when it closes. Equal keys keep
//! the last entry, as `serde_json::Map` does.
//!
//! What this encoder does not spell itself (a map key that is a float, an integer beyond 64
//! bits, a serde_json-private type, an error raised by the value's own `Serialize`) stops it
//! with [`Stop::Unsupported`], and the caller hands the parameters to serde_json's own value
//! conversion instead (see `canonical` in the parent module), so those keep exactly the key
//! and the errors they had.

use std::cell::RefCell;
use std::fmt;

use serde::ser::{self, Serialize};

use super::float::push_python_float;
use super::HEX_DIGITS;

/// Why the encoder stopped.
#[derive(Debug)]
pub(super) enum Stop {
    /// A NaN or infinite float: JSON has no spelling for it.
    NonFinite(f64),
    /// Something this encoder leaves to serde_json's value conversion (see the module docs).
    Unsupported,
    /// The JSON would be longer than the limit it was given (bytes).
    TooLarge(usize),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::NonFinite(x) => write!(f, "float {x} has no JSON form"),
            Stop::Unsupported => f.write_str("not spelled by the canonical encoder"),
            Stop::TooLarge(limit) => write!(f, "longer than {limit} bytes"),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        // serde_json's conversion, which the caller falls back to, words the error.
        Stop::Unsupported
    }
}

type Done = Result<(), Stop>;

/// Buffers beyond this capacity are released after use, so one huge parameter set does not
/// pin its memory to the thread.
const KEEP_CAPACITY: usize = 16 << 10;

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// Runs `f` on the canonical JSON of `params`.
///
/// Uses the thread's buffers; a `Serialize` implementation that derives a key itself (so
/// re-enters here) gets buffers of its own.
///
/// `f` may append to the buffer it is given (to pad it for hashing, say): it is cleared before
/// the next use.
pub(super) fn with_canonical<P, R>(
    params: &P,
    limit: usize,
    f: impl Fn(&mut Vec<u8>) -> R,
) -> Result<R, Stop>
where
    P: Serialize + ?Sized,
{
    let run = |scratch: &mut Scratch| {
        scratch.limit = limit;
        let result = scratch.encode(params).map(&f);
        scratch.release_if_large();
        result
    };
    SCRATCH
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => run(&mut scratch),
            Err(_) => run(&mut Scratch::new()),
        })
        .unwrap_or_else(|_| run(&mut Scratch::new()))
}

/// One object entry written to [`Scratch::out`].
#[derive(Clone, Copy)]
struct Entry {
    key: Key,
    /// Where the entry's `"key": value` starts in `out` (after any separator).
    start: usize,
    end: usize,
}

/// An entry's raw (unescaped) key.
#[derive(Clone, Copy)]
enum Key {
    /// A struct field's name.
    Field(&'static str),
    /// A map key, copied to [`Scratch::keys`] at this range.
    Copied(usize, usize),
}

impl Key {
    fn bytes(self, keys: &[u8]) -> &[u8] {
        match self {
            Key::Field(name) => name.as_bytes(),
            Key::Copied(start, end) => &keys[start..end],
        }
    }
}

/// The encoder's buffers.
struct Scratch {
    /// The JSON being written.
    out: Vec<u8>,
    /// The raw (unescaped) keys of the open objects' entries: Python sorts by code point, and
    /// escaped text does not sort like the text it escapes.
    keys: Vec<u8>,
    /// The entries of the open objects, innermost last.
    entries: Vec<Entry>,
    /// Where an unsorted object is copied while it is rewritten in order.
    tmp: Vec<u8>,
    /// The most bytes `out` may hold: checked before each string is written (the only part
    /// of the output as long as the input), so the buffer never grows far past it.
    limit: usize,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            out: Vec::new(),
            keys: Vec::new(),
            entries: Vec::new(),
            tmp: Vec::new(),
            limit: usize::MAX,
        }
    }

    /// Whether `more` bytes still fit under the limit.
    fn room(&self, more: usize) -> Done {
        if self.out.len().saturating_add(more) > self.limit {
            Err(Stop::TooLarge(self.limit))
        } else {
            Ok(())
        }
    }

    fn encode<P: Serialize + ?Sized>(&mut self, params: &P) -> Result<&mut Vec<u8>, Stop> {
        self.out.clear();
        self.keys.clear();
        self.entries.clear();
        params.serialize(&mut *self)?;
        self.room(0)?;
        Ok(&mut self.out)
    }

    fn release_if_large(&mut self) {
        // `keys` and `tmp` only grow as far as `out` does (raw keys are no longer than their
        // escaped text; `tmp` holds one object of `out`).
        if self.out.capacity() > KEEP_CAPACITY
            || self.entries.capacity() * std::mem::size_of::<Entry>() > KEEP_CAPACITY
        {
            *self = Scratch::new();
        }
    }

    /// Opens an object: `{`, then entries through the returned [`Object`].
    fn object(&mut self, braces: u8) -> Object<'_> {
        self.out.push(b'{');
        Object {
            region: self.out.len(),
            first_entry: self.entries.len(),
            keys_from: self.keys.len(),
            sorted: true,
            entry_start: 0,
            key: Key::Copied(0, 0),
            braces,
            s: self,
        }
    }

    /// Opens `{"variant": ` for an enum variant with content.
    fn variant(&mut self, variant: &str) {
        self.out.push(b'{');
        push_string(&mut self.out, variant);
        self.out.extend_from_slice(b": ");
    }
}

/// An open array (or the array of a tuple variant, whose `close` also closes its object).
pub(super) struct Array<'a> {
    s: &'a mut Scratch,
    first: bool,
    close: &'static [u8],
}

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.s.room(0)?;
        if !self.first {
            self.s.out.extend_from_slice(b", ");
        }
        self.first = false;
        value.serialize(&mut *self.s)
    }

    fn close(self) -> Done {
        self.s.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// An open object.
pub(super) struct Object<'a> {
    s: &'a mut Scratch,
    /// Just after the `{`.
    region: usize,
    first_entry: usize,
    keys_from: usize,
    /// Whether every key so far arrived after the one before it.
    sorted: bool,
    /// Where the entry being written starts in `out`, and its key.
    entry_start: usize,
    key: Key,
    /// Closing braces: 1, or 2 for a struct variant's object in its own.
    braces: u8,
}

impl Object<'_> {
    /// Starts an entry: the separator, then where it starts.
    fn begin(&mut self) -> Done {
        self.s.room(0)?;
        if self.s.entries.len() > self.first_entry {
            self.s.out.extend_from_slice(b", ");
        }
        self.entry_start = self.s.out.len();
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.s.out.extend_from_slice(b": ");
        value.serialize(&mut *self.s)?;
        let entry = Entry {
            key: self.key,
            start: self.entry_start,
            end: self.s.out.len(),
        };
        if self.sorted && self.s.entries.len() > self.first_entry {
            if let Some(previous) = self.s.entries.last() {
                let keys = &self.s.keys;
                self.sorted = previous.key.bytes(keys) < entry.key.bytes(keys);
            }
        }
        self.s.entries.push(entry);
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.begin()?;
        self.s.room(key.len() + 2)?;
        push_string(&mut self.s.out, key);
        self.key = Key::Field(key);
        self.value(value)
    }

    fn close(self) -> Done {
        let Object {
            s,
            region,
            first_entry,
            keys_from,
            sorted,
            braces,
            ..
        } = self;
        if !sorted {
            s.rewrite_sorted(region, first_entry);
        }
        s.entries.truncate(first_entry);
        s.keys.truncate(keys_from);
        for _ in 0..braces {
            s.out.push(b'}');
        }
        Ok(())
    }
}

impl Scratch {
    /// Rewrites the object whose entries start at `region` in `out` (and at `first_entry` in
    /// `entries`) in key order, keeping the last of equal keys.
    fn rewrite_sorted(&mut self, region: usize, first_entry: usize) {
        let Scratch {
            out,
            keys,
            entries,
            tmp,
            ..
        } = self;
        let entries = &mut entries[first_entry..];
        // `start` grows with arrival, so it orders equal keys by arrival without a stable sort
        // (which would allocate).
        entries.sort_unstable_by(|a, b| {
            a.key
                .bytes(keys)
                .cmp(b.key.bytes(keys))
                .then(a.start.cmp(&b.start))
        });
        tmp.clear();
        tmp.extend_from_slice(&out[region..]);
        out.truncate(region);
        let mut first = true;
        for (i, entry) in entries.iter().enumerate() {
            let key = entry.key.bytes(keys);
            let superseded = entries
                .get(i + 1)
                .is_some_and(|next| next.key.bytes(keys) == key);
            if superseded {
                continue;
            }
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            out.extend_from_slice(&tmp[entry.start - region..entry.end - region]);
        }
    }
}

/// Types serde_json serializes as itself (its arbitrary-precision numbers, raw values): left to
/// its own conversion.
fn is_serde_json_private(name: &str) -> bool {
    name.starts_with("$serde_json::private::")
}

impl<'a> ser::Serializer for &'a mut Scratch {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Done {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Done {
        push_i64(&mut self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Done {
        // serde_json takes what fits 64 bits and refuses the rest.
        if let Ok(v) = u64::try_from(v) {
            self.serialize_u64(v)
        } else if let Ok(v) = i64::try_from(v) {
            self.serialize_i64(v)
        } else {
            Err(Stop::Unsupported)
        }
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Done {
        push_u64(&mut self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Done {
        u64::try_from(v)
            .map_err(|_| Stop::Unsupported)
            .and_then(|v| self.serialize_u64(v))
    }
    fn serialize_f32(self, v: f32) -> Done {
        // As serde_json: the `f32` widened to the `f64` it is exactly.
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Done {
        push_python_float(v, &mut self.out).ok_or(Stop::NonFinite(v))
    }
    fn serialize_char(self, v: char) -> Done {
        push_string(&mut self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Done {
        // An escape writes at most 12 bytes for a 4-byte character (a surrogate pair): the
        // check is on the plain length, and the total is checked again as the call returns.
        self.room(v.len() + 2)?;
        push_string(&mut self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Done {
        self.room(v.len().saturating_mul(2))?;
        // serde_json: an array of numbers.
        self.out.push(b'[');
        for (i, &b) in v.iter().enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            push_u64(&mut self.out, u64::from(b));
        }
        self.out.push(b']');
        Ok(())
    }
    fn serialize_none(self) -> Done {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Done {
        if is_serde_json_private(name) {
            return Err(Stop::Unsupported);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Done {
        self.variant(variant);
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Array<'a>, Stop> {
        self.out.push(b'[');
        Ok(Array {
            s: self,
            first: true,
            close: b"]",
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Stop> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Array<'a>, Stop> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Array<'a>, Stop> {
        self.variant(variant);
        self.out.push(b'[');
        Ok(Array {
            s: self,
            first: true,
            close: b"]}",
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Stop> {
        Ok(self.object(1))
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Object<'a>, Stop> {
        if is_serde_json_private(name) {
            return Err(Stop::Unsupported);
        }
        Ok(self.object(1))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'a>, Stop> {
        self.variant(variant);
        Ok(self.object(2))
    }
}

impl ser::SerializeSeq for Array<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.element(value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeTuple for Array<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.element(value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Array<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.element(value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeTupleVariant for Array<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.element(value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        self.begin()?;
        let start = self.s.keys.len();
        key.serialize(KeyWriter(&mut *self.s))?;
        self.key = Key::Copied(start, self.s.keys.len());
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        self.value(value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.field(key, value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Done {
        self.field(key, value)
    }
    fn end(self) -> Done {
        self.close()
    }
}

/// Writes a map key as serde_json's value conversion turns it into a string: strings and
/// chars as they are, booleans and integers as their text, unit variants as their name. Any
/// other key is [`Stop::Unsupported`] (serde_json spells float keys its own way, and refuses
/// the rest).
struct KeyWriter<'a>(&'a mut Scratch);

impl KeyWriter<'_> {
    fn text(self, key: &[u8]) -> Done {
        // Only called with ASCII digits, signs and letters: no escaping needed.
        self.0.keys.extend_from_slice(key);
        self.0.out.push(b'"');
        self.0.out.extend_from_slice(key);
        self.0.out.push(b'"');
        Ok(())
    }

    fn integer(self, negative: bool, magnitude: u64) -> Done {
        let mut digits = [0u8; 21];
        let len = write_u64(&mut digits[1..], magnitude);
        let start = 21 - len - usize::from(negative);
        if negative {
            digits[start] = b'-';
        }
        self.text(&digits[start..])
    }
}

impl ser::Serializer for KeyWriter<'_> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = ser::Impossible<(), Stop>;
    type SerializeTuple = ser::Impossible<(), Stop>;
    type SerializeTupleStruct = ser::Impossible<(), Stop>;
    type SerializeTupleVariant = ser::Impossible<(), Stop>;
    type SerializeMap = ser::Impossible<(), Stop>;
    type SerializeStruct = ser::Impossible<(), Stop>;
    type SerializeStructVariant = ser::Impossible<(), Stop>;

    fn serialize_str(self, v: &str) -> Done {
        self.0.room(v.len() + 2)?;
        self.0.keys.extend_from_slice(v.as_bytes());
        push_string(&mut self.0.out, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Done {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_bool(self, v: bool) -> Done {
        self.text(if v { b"true" } else { b"false" })
    }
    fn serialize_i8(self, v: i8) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Done {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Done {
        self.integer(v < 0, v.unsigned_abs())
    }
    fn serialize_u8(self, v: u8) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Done {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Done {
        self.integer(false, v)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Done {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Done {
        if is_serde_json_private(name) {
            return Err(Stop::Unsupported);
        }
        value.serialize(self)
    }

    // Everything else: serde_json's conversion decides (float keys) or refuses.
    fn serialize_i128(self, _: i128) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_u128(self, _: u128) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_f32(self, _: f32) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_f64(self, _: f64) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_bytes(self, _: &[u8]) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_none(self) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_unit(self) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Done {
        Err(Stop::Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop::Unsupported)
    }
}

/// Writes the decimal digits of `v` at the end of `buf`; returns how many.
fn write_u64(buf: &mut [u8], mut v: u64) -> usize {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return buf.len() - at;
        }
    }
}

/// Appends the decimal digits of `v`.
pub(super) fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let len = write_u64(&mut digits, v);
    out.extend_from_slice(&digits[20 - len..]);
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

/// The bytes a JSON string holds as they are: printable ASCII but `"` and `\\`.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        table[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    table
};

/// A JSON string with Python's `ensure_ascii=True` escaping: printable ASCII as it is, the
/// usual short escapes, and every other character as lowercase `\uXXXX` (astral characters as
/// a UTF-16 surrogate pair).
fn push_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    // Parameters are nearly always plain: one scan, one copy.
    if all_plain(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let first = bytes
            .iter()
            .position(|&b| !PLAIN[usize::from(b)])
            .unwrap_or(bytes.len());
        push_escaped(out, s, first);
    }
    out.push(b'"');
}

/// Whether every byte of `bytes` is [`PLAIN`], eight at a time.
#[inline]
fn all_plain(bytes: &[u8]) -> bool {
    if bytes.len() < 16 {
        return bytes.iter().all(|&b| PLAIN[usize::from(b)]);
    }
    let (words, tail) = bytes.as_chunks::<8>();
    if !words
        .iter()
        .all(|word| plain_word(u64::from_le_bytes(*word)))
    {
        return false;
    }
    tail.iter().all(|&b| PLAIN[usize::from(b)])
}

/// Whether none of the eight bytes of `word` needs an escape: none below `' '`, at or above
/// DEL, `"` or `\\` (the classic "has a byte less than / equal to" bit tricks).
#[inline]
fn plain_word(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * u64::from(b' ')) & !word & HIGH;
    let special = below_space
        | (word & HIGH)
        | zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        | zero_byte(word ^ (ONES * 0x7f));
    special == 0
}

/// The body of a string whose first byte needing an escape is at `first`.
#[cold]
fn push_escaped(out: &mut Vec<u8>, s: &str, first: usize) {
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    let mut at = first;
    while let Some(&b) = bytes.get(at) {
        if PLAIN[usize::from(b)] {
            at += 1;
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..at]);
        if b.is_ascii() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => push_unicode_escape(u16::from(b), out),
            }
            at += 1;
        } else {
            // `at` is on a character boundary: every byte before it was ASCII or a whole
            // character.
            let c = s[at..]
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                push_unicode_escape(*unit, out);
            }
            at += c.len_utf8();
        }
        plain_from = at;
    }
    out.extend_from_slice(&bytes[plain_from..]);
}

/// `\uXXXX` with four lowercase hexadecimal digits.
fn push_unicode_escape(unit: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\u");
    for shift in [12u16, 8, 4, 0] {
        out.push(HEX_DIGITS[usize::from((unit >> shift) & 0x0f)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_check_agrees_with_the_table_for_every_byte_in_every_place() {
        for b in 0..=255u8 {
            for place in 0..8 {
                let mut word = [b'a'; 8];
                word[place] = b;
                assert_eq!(
                    plain_word(u64::from_le_bytes(word)),
                    PLAIN[usize::from(b)],
                    "byte {b:#04x} at {place}"
                );
            }
        }
        // Two specials together, and a special beside bytes just inside the plain range.
        for (a, b) in [
            (0x1f, b'"'),
            (b' ', 0x7f),
            (b'~', 0x80),
            (b'\\', 0xff),
            (0, b'#'),
        ] {
            let word = u64::from_le_bytes([b' ', a, b'~', b, b'!', b'}', b'[', b']']);
            assert!(!plain_word(word), "{a:#04x} and {b:#04x}");
        }
    }

    #[test]
    fn strings_of_every_length_escape_a_special_in_every_place() {
        for len in 0..20 {
            let plain = "x".repeat(len);
            let mut out = Vec::new();
            push_string(&mut out, &plain);
            assert_eq!(out, format!("\"{plain}\"").into_bytes());
            for place in 0..len {
                for (special, escaped) in
                    [("\"", "\\\""), ("\u{7f}", "\\u007f"), ("\u{e9}", "\\u00e9")]
                {
                    let s = format!("{}{special}{}", &plain[..place], &plain[place + 1..]);
                    let mut out = Vec::new();
                    push_string(&mut out, &s);
                    let expected =
                        format!("\"{}{escaped}{}\"", &plain[..place], &plain[place + 1..]);
                    assert_eq!(String::from_utf8(out).unwrap(), expected);
                }
            }
        }
    }
}
