//! Key derivation checked against the Python seed itself, byte for byte.
//!
//! Rust nodes share their L2 store with Python seed nodes, which derive a key as
//! `f"{ns}:{hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()}"`. A key
//! that differs in a single byte is a silent miss on one side and a stale entry nobody
//! invalidates on the other, so byte-identical keys are a hard requirement. The unit tests of
//! `cache_core::key` pin hand-picked spellings; this test asks a real `python3` about some 3,000
//! generated parameter sets (unicode, every escape class, float repr boundaries and ties,
//! integers past 2^53, nesting to depth 4, keys that stress code-point sorting) and compares
//! the canonical JSON text and the full key of every one.
//!
//! Each set is derived three ways: [`CacheKey::derive`] and [`CacheKey::from_json`] on the
//! `serde_json::Value`, and [`CacheKey::derive`] on [`Shuffled`], a `Serialize` wrapper that
//! walks the same tree but emits every object's entries out of order, as a hand-written
//! `Serialize` impl or a `HashMap` may.
//!
//! `python3` runs once for the whole batch. Where it is missing the test fails, never skips:
//! `sudo apt-get install -y python3`, or `cargo xtask test`, which installs it.

use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use cache_core::{canonical_json, CacheKey};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Base seed of the generated sets; `PYTHON_KEYS_SEED=N` explores others. A failure names the
/// base seed and the failing sets' indexes, which reproduce them.
const BASE_SEED: u64 = 0x05ee_d0fe_d6ec_ac4e;

/// Number of randomly generated sets, on top of the hand-picked ones.
const RANDOM_SETS: usize = 2_900;

/// Deepest nesting of arrays and objects in a generated set (the top level is depth 0).
const MAX_DEPTH: u32 = 4;

/// At most this many mismatches are printed in full.
const SHOWN_MISMATCHES: usize = 5;

/// The seed's derivation, for every `[ns, params]` line on stdin one `[json_text, key]` line on
/// stdout. Reading bytes keeps the locale out of it; the output is ASCII (`ensure_ascii`).
const PYTHON: &str = r#"
import hashlib, json, sys
out = []
for line in sys.stdin.buffer:
    ns, params = json.loads(line)
    text = json.dumps(params, sort_keys=True)
    key = f"{ns}:{hashlib.sha256(text.encode()).hexdigest()}"
    out.append(json.dumps([text, key]))
sys.stdout.write("\n".join(out) + "\n")
"#;

#[test]
fn keys_are_byte_identical_to_the_python_seed() {
    let started = Instant::now();
    let base = match std::env::var("PYTHON_KEYS_SEED") {
        Ok(s) => s.parse().expect("PYTHON_KEYS_SEED must be a u64"),
        Err(_) => BASE_SEED,
    };
    let cases = corpus(base);
    assert!(cases.len() > RANDOM_SETS, "the corpus is too small");

    let mut input = String::new();
    for case in &cases {
        input.push_str(&serde_json::to_string(&json!([case.ns, case.params])).expect("encodes"));
        input.push('\n');
    }
    let python = run_python(input);
    assert_eq!(
        python.len(),
        cases.len(),
        "python3 answered {} of {} parameter sets",
        python.len(),
        cases.len()
    );

    let mut mismatches = Vec::new();
    for (i, (case, (py_text, py_key))) in cases.iter().zip(&python).enumerate() {
        let text = shown(canonical_json(&case.params));
        let derived = shown(CacheKey::derive(case.ns, &case.params).map(key_text));
        let from_json = shown(CacheKey::from_json(case.ns, &case.params).map(key_text));
        let shuffled = Shuffled {
            value: &case.params,
            seed: case.seed,
        };
        let out_of_order = shown(CacheKey::derive(case.ns, &shuffled).map(key_text));
        if [&text, &derived, &from_json, &out_of_order] != [py_text, py_key, py_key, py_key] {
            mismatches.push(format!(
                "set {i} (seed {seed:#x}, {origin}):\n\
                 \x20 input:            {input}\n\
                 \x20 python text:      {py_text}\n\
                 \x20 our text:         {text}\n\
                 \x20 python key:       {py_key}\n\
                 \x20 derive:           {derived}\n\
                 \x20 from_json:        {from_json}\n\
                 \x20 derive(shuffled): {out_of_order}",
                seed = case.seed,
                origin = case.origin,
                input = serde_json::to_string(&case.params).expect("encodes"),
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} parameter sets derive a different key or canonical JSON than the Python \
         seed (base seed {base:#x}); the first {}:\n\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.len().min(SHOWN_MISMATCHES),
        mismatches[..mismatches.len().min(SHOWN_MISMATCHES)].join("\n\n"),
    );
    eprintln!(
        "{} parameter sets derive the Python seed's keys ({:.2?})",
        cases.len(),
        started.elapsed()
    );
}

/// The key's text, owned, to compare with Python's.
fn key_text(key: CacheKey) -> String {
    key.as_str().to_owned()
}

/// The text, or the error spelled so that it cannot be mistaken for Python's output.
fn shown(result: cache_core::Result<String>) -> String {
    result.unwrap_or_else(|e| format!("<error: {e}>"))
}

/// Runs [`PYTHON`] on `input` and returns its `(json_text, key)` answers in order.
///
/// # Panics
///
/// If `python3` is missing or fails: the test must not pass without having asked it.
fn run_python(input: String) -> Vec<(String, String)> {
    let mut child = match Command::new("python3")
        .args(["-I", "-c", PYTHON])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 is not on PATH, and this test needs it to check keys against the Python \
             seed. Install it with `sudo apt-get install -y python3`, or run `cargo xtask test`, \
             which installs it."
        ),
        Err(e) => panic!("cannot start python3: {e}"),
    };
    // Written from another thread so that neither side blocks on a full pipe.
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python3 runs");
    writer
        .join()
        .expect("the writer thread does not panic")
        .expect("python3 reads its input");
    assert!(
        output.status.success(),
        "python3 failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("python3 writes ASCII");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("python3 writes [text, key] lines"))
        .collect()
}

/// One parameter set, its namespace, and where it came from.
struct Case {
    ns: &'static str,
    params: Value,
    /// The generator's seed for this set; also seeds [`Shuffled`]'s orders.
    seed: u64,
    origin: &'static str,
}

/// Namespaces the sets are derived in; the seed uses them verbatim.
const NAMESPACES: [&str; 4] = ["gpu_avail", "ns", "booking-v2.list", "\u{e9}t\u{e9}"];

/// The hand-picked edge cases, each alone and all together, then [`RANDOM_SETS`] generated
/// sets.
fn corpus(base: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut rng = Rng::new(base);
    let mut push = |params: Value, origin: &'static str, rng: &mut Rng| {
        let i = cases.len();
        cases.push(Case {
            ns: NAMESPACES[i % NAMESPACES.len()],
            params,
            seed: rng.next(),
            origin,
        });
    };

    let floats: Vec<Value> = SPECIAL_FLOATS.iter().map(|&f| json!(f)).collect();
    let ints: Vec<Value> = special_ints();
    let strings: Vec<Value> = special_strings().into_iter().map(Value::String).collect();
    for v in floats.iter().chain(&ints).chain(&strings) {
        push(json!({ "v": v }), "hand-picked value", &mut rng);
        push(json!([v]), "hand-picked value", &mut rng);
    }
    let keys = special_keys();
    for (i, k) in keys.iter().enumerate() {
        push(
            json!({ k.as_str(): i, "x": null }),
            "hand-picked key",
            &mut rng,
        );
    }
    let all_keys: Map<String, Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), json!(i)))
        .collect();
    push(
        Value::Object(all_keys.clone()),
        "every stress key",
        &mut rng,
    );
    push(
        json!({ "a": all_keys.clone(), "b": [all_keys.clone(), { "c": all_keys }] }),
        "every stress key, nested",
        &mut rng,
    );
    push(
        json!({ "floats": floats }),
        "every hand-picked float",
        &mut rng,
    );
    push(
        json!({ "ints": ints }),
        "every hand-picked integer",
        &mut rng,
    );
    push(
        json!({ "strings": strings }),
        "every hand-picked string",
        &mut rng,
    );
    for scalar in [json!(null), json!(true), json!(false), json!({}), json!([])] {
        push(scalar, "bare scalar or empty", &mut rng);
    }

    for _ in 0..RANDOM_SETS {
        let seed = rng.next();
        let mut gen = Rng::new(seed);
        // Parameters are an object nearly always; other top-level values are still valid JSON.
        let params = if gen.below(10) == 0 {
            gen.value(0)
        } else {
            gen.object(0)
        };
        let i = cases.len();
        cases.push(Case {
            ns: NAMESPACES[i % NAMESPACES.len()],
            params,
            seed,
            origin: "generated",
        });
    }
    cases
}

/// Floats whose Python `repr` is easy to get wrong.
#[allow(
    clippy::excessive_precision,
    reason = "the ties are spelled as their exact binary values"
)]
const SPECIAL_FLOATS: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.5,
    0.1,
    0.30000000000000004,
    // Fixed notation holds for decimal exponents -4..16, scientific notation outside.
    1e-4,
    0.00012345,
    9.999999999999999e-5,
    1e-5,
    1.5e-5,
    1e15,
    9999999999999998.0,
    1e16,
    1.0000000000000002e16,
    1e22,
    1e23,
    123456789012345680.0,
    // Exact ties between two shortest spellings: CPython rounds half to even.
    1_059_438_285_926_254.25,
    2.980_232_238_769_531_25e-8,
    0.000_128_269_195_556_640_625,
    -26.362_808_227_539_062_5,
    10_144.282_592_773_437_5,
    // Integral floats around 2^53 stay floats.
    9007199254740992.0,
    9007199254740994.0,
    -9007199254740992.0,
    // The ends of the range.
    f64::MAX,
    -f64::MAX,
    f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    2.225_073_858_507_201e-308, // the largest subnormal
    f64::EPSILON,
    std::f64::consts::PI,
];

/// Integers around the edges of what JSON numbers, doubles and serde_json hold.
fn special_ints() -> Vec<Value> {
    let p53: i64 = 1 << 53;
    let mut out: Vec<Value> = [0, 1, -1, 42, -42, p53 - 1, p53, p53 + 1, -p53 - 1]
        .into_iter()
        .map(|i| json!(i))
        .collect();
    out.extend([
        json!(i64::MAX),
        json!(i64::MIN),
        json!(i64::MIN + 1),
        json!(u64::MAX),
        json!(u64::MAX - 1),
        json!(1u64 << 63),
        json!(10_000_000_000_000_000_000u64),
    ]);
    out
}

/// One string for each escape class and each unicode range, plus mixtures.
fn special_strings() -> Vec<String> {
    let mut out: Vec<String> = (0u32..0x20)
        .chain([0x22, 0x5c, 0x2f, 0x7f, 0x80, 0x9f, 0xa0, 0xff])
        .filter_map(char::from_u32)
        .map(|c| format!("a{c}b"))
        .collect();
    out.extend(
        [
            "",
            " ",
            "plain ascii ~!@#$%^&*()",
            "caf\u{e9} na\u{ef}ve \u{df}",
            "e\u{301} a\u{308}\u{323}",         // combining marks
            "\u{4e2d}\u{6587}\u{6f22}\u{5b57}", // BMP CJK
            "\u{1f600}\u{1f680}\u{1faf6}",      // astral emoji: surrogate pairs
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}", // ZWJ sequence
            "\u{ff61}\u{ff76}\u{ffe0}\u{ffe8}", // halfwidth forms
            "\u{fffd}\u{fffe}\u{ffff}",
            "\u{d7ff}\u{e000}\u{10000}\u{10ffff}", // around the surrogate range and the top
            "\u{2028}\u{2029}\u{feff}\u{200b}",    // separators JS would choke on, BOM
            "\\u0041 is not an escape",
            "\"quoted\" and \\back\\slashed/",
            "</script>",
            "null",
            "1e16",
        ]
        .map(str::to_owned),
    );
    out.push("\u{0}".repeat(3));
    out.push("x".repeat(300));
    out
}

/// Object keys whose order differs between code-point, UTF-16 and naive comparisons.
fn special_keys() -> Vec<String> {
    [
        "",
        "a",
        "ab",
        "aa",
        "a\u{0}",
        "A",
        "B",
        "b",
        "_",
        " ",
        "\u{0}",
        "\u{1f}",
        "\u{7f}",
        "\"",
        "\\",
        "/",
        "a\"b",
        "a\\b",
        "\n",
        "\u{e9}",
        "e\u{301}",
        "\u{ff}",
        "\u{100}",
        "\u{ff61}", // sorts before U+1F600 by code point, after it in UTF-16
        "\u{ffff}",
        "\u{1f600}",
        "\u{10000}",
        "\u{e000}",
        "\u{d7ff}",
        "\u{10ffff}",
        "10",
        "9",
        "-1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// xorshift64*, seeded through splitmix64 so that nearby seeds give unrelated streams.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for test data (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Any value; containers only above [`MAX_DEPTH`].
    fn value(&mut self, depth: u32) -> Value {
        let kinds = if depth < MAX_DEPTH { 9 } else { 7 };
        match self.below(kinds) {
            0 => Value::Null,
            1 => Value::Bool(self.next() & 1 == 1),
            2 | 3 => self.float(),
            4 => self.int(),
            5 | 6 => Value::String(self.string()),
            7 => self.array(depth),
            _ => self.object(depth),
        }
    }

    fn array(&mut self, depth: u32) -> Value {
        let len = self.below(6);
        Value::Array((0..len).map(|_| self.value(depth + 1)).collect())
    }

    fn object(&mut self, depth: u32) -> Value {
        let len = self.below(7);
        let mut map = Map::new();
        for _ in 0..len {
            let key = if self.below(3) == 0 {
                self.pick(&special_keys()).clone()
            } else {
                self.string()
            };
            map.insert(key, self.value(depth + 1));
        }
        Value::Object(map)
    }

    fn float(&mut self) -> Value {
        let f = match self.below(9) {
            0 => *self.pick(SPECIAL_FLOATS),
            // Any finite bit pattern.
            1 | 2 => loop {
                let f = f64::from_bits(self.next());
                if f.is_finite() {
                    break f;
                }
            },
            // Subnormals.
            3 => f64::from_bits(self.next() & ((1 << 52) - 1) | (self.next() & (1 << 63))),
            // A neighbour of a repr boundary or a special value, a few ulps away.
            4 => {
                let base = *self.pick(&[1e-4, 1e-5, 1e15, 1e16, 1e-4 * 0.5, f64::MAX, 5e-324]);
                let ulps = self.below(7) as i64 - 3;
                let f = f64::from_bits(base.to_bits().wrapping_add_signed(ulps));
                if f.is_finite() {
                    f
                } else {
                    base
                }
            }
            // Dyadic values m / 2^e have short exact decimal expansions: the home of exact ties
            // between two shortest spellings, like 1059438285926254.25.
            5 | 6 => {
                let m = (self.next() >> 11) | (1 << 52);
                let e = self.below(120) as i32 - 20;
                let f = m as f64 * 2f64.powi(-e);
                if self.next() & 1 == 1 {
                    -f
                } else {
                    f
                }
            }
            // Decimal-looking values, as people write parameters.
            7 => (self.next() % 2_000_001) as f64 / 10f64.powi(self.below(9) as i32) - 100.0,
            // Integral floats, some past 2^53.
            _ => (self.next() >> self.below(64)) as f64,
        };
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }

    fn int(&mut self) -> Value {
        let p53: i64 = 1 << 53;
        match self.below(6) {
            0 => json!(self.below(201) as i64 - 100),
            1 => json!(p53 + self.below(9) as i64 - 4),
            2 => json!(-p53 - self.below(9) as i64 + 4),
            3 => json!(self.next()),
            4 => json!(self.next() as i64),
            _ => self.pick(&special_ints()).clone(),
        }
    }

    fn string(&mut self) -> String {
        let len = self.below(13);
        (0..len).map(|_| self.char()).collect()
    }

    fn char(&mut self) -> char {
        // Inclusive code point ranges, one per class of character.
        const RANGES: &[(u32, u32)] = &[
            (0x20, 0x7e),       // printable ASCII
            (0x20, 0x7e),       // printable ASCII, twice as likely
            (0x00, 0x1f),       // control characters
            (0x7f, 0x9f),       // DEL and C1 controls
            (0xa0, 0xff),       // Latin-1
            (0x300, 0x36f),     // combining marks
            (0x4e00, 0x9fff),   // CJK
            (0xd7f0, 0xd7ff),   // just below the surrogates
            (0xe000, 0xe0ff),   // just above them
            (0xff61, 0xffef),   // halfwidth forms
            (0xfff0, 0xffff),   // specials and noncharacters
            (0x1f300, 0x1faff), // emoji
            (0x10000, 0x10ffff),
        ];
        if self.below(8) == 0 {
            return *self.pick(&['"', '\\', '/', '\u{7f}', '\n', '\t', '\u{0}']);
        }
        let &(lo, hi) = self.pick(RANGES);
        loop {
            let c = lo + (self.next() % u64::from(hi - lo + 1)) as u32;
            if let Some(c) = char::from_u32(c) {
                break c;
            }
        }
    }
}

/// Serializes `value` the way a caller's own `Serialize` type might: every object's entries in
/// a shuffled order (never sorted, when it has two or more), through `serialize_map` with and
/// without a length and with `serialize_entry` or separate `serialize_key`/`serialize_value`;
/// arrays as sequences or tuples; `null` as `None` or `()`; one-character strings sometimes as
/// a `char`. The same seed always gives the same order, as derivation may serialize twice.
struct Shuffled<'a> {
    value: &'a Value,
    seed: u64,
}

impl Shuffled<'_> {
    fn child(&self, i: usize) -> u64 {
        self.seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64 + 1)
    }
}

impl Serialize for Shuffled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rng = Rng::new(self.seed);
        match self.value {
            Value::Null if rng.next() & 1 == 1 => serializer.serialize_none(),
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    match i64::try_from(u) {
                        Ok(i) if rng.next() & 1 == 1 => serializer.serialize_i64(i),
                        _ => serializer.serialize_u64(u),
                    }
                } else if let Some(i) = n.as_i64() {
                    serializer.serialize_i64(i)
                } else {
                    serializer.serialize_f64(n.as_f64().expect("a float"))
                }
            }
            Value::String(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if rng.next() & 1 == 1 => serializer.serialize_char(c),
                    _ => serializer.serialize_str(s),
                }
            }
            Value::Array(items) => {
                let children = items.iter().enumerate().map(|(i, value)| Shuffled {
                    value,
                    seed: self.child(i),
                });
                if rng.next() & 1 == 1 {
                    let mut tuple = serializer.serialize_tuple(items.len())?;
                    for child in children {
                        tuple.serialize_element(&child)?;
                    }
                    tuple.end()
                } else {
                    let len = (rng.next() & 1 == 1).then_some(items.len());
                    let mut seq = serializer.serialize_seq(len)?;
                    for child in children {
                        seq.serialize_element(&child)?;
                    }
                    seq.end()
                }
            }
            Value::Object(map) => {
                let mut entries: Vec<(usize, &String, &Value)> = map
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| (i, k, v))
                    .collect();
                for i in (1..entries.len()).rev() {
                    entries.swap(i, rng.below(i + 1));
                }
                if entries.windows(2).all(|w| w[0].1 < w[1].1) {
                    entries.reverse();
                }
                let len = (rng.next() & 1 == 1).then_some(entries.len());
                let mut out = serializer.serialize_map(len)?;
                for (i, key, value) in entries {
                    let child = Shuffled {
                        value,
                        seed: self.child(i),
                    };
                    if rng.next() & 1 == 1 {
                        out.serialize_entry(key, &child)?;
                    } else {
                        out.serialize_key(key.as_str())?;
                        out.serialize_value(&child)?;
                    }
                }
                out.end()
            }
        }
    }
}
