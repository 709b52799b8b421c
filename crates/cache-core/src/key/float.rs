//! Python's `repr(float)`, written without allocating.

use std::fmt::{self, Write as _};

/// Appends Python's `repr(f)` of a finite `f` to `out`: shortest round-trip digits, fixed
/// notation for decimal exponents in `-4..16` (always with a fractional part), scientific
/// notation with a signed exponent of at least two digits otherwise.
///
/// Returns `None`, writing nothing, if `f` is not finite (JSON has no spelling for it).
pub(super) fn push_python_float(f: f64, out: &mut Vec<u8>) -> Option<()> {
    if !f.is_finite() {
        return None;
    }
    // `{:e}` gives the shortest digits that round-trip, e.g. `-1.5e-5`, `1e16`, `-0e0`.
    let mut sci = Stack::<32>::new();
    write!(sci, "{f:e}").ok()?;
    let (negative, mut digits, mut exp) = sci_parts(sci.as_bytes())?;
    if let Some((even, even_exp)) = tie_to_even(f.abs(), digits.as_bytes(), exp) {
        digits = even;
        exp = even_exp;
    }
    let digits = digits.as_bytes();

    if negative {
        out.push(b'-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            // Lossless: 0 <= exp < 16.
            let int_len = exp.unsigned_abs() as usize + 1;
            if digits.len() <= int_len {
                out.extend_from_slice(digits);
                out.resize(out.len() + int_len - digits.len(), b'0');
                out.extend_from_slice(b".0");
            } else {
                let (int_part, frac_part) = digits.split_at(int_len);
                out.extend_from_slice(int_part);
                out.push(b'.');
                out.extend_from_slice(frac_part);
            }
        } else {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + exp.unsigned_abs() as usize - 1, b'0');
            out.extend_from_slice(digits);
        }
    } else {
        let (first, rest) = digits.split_at(1);
        out.extend_from_slice(first);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        super::json::push_u64(out, u64::from(magnitude));
    }
    Some(())
}

/// Splits Rust's `{:e}` output (`-1.25e-7`, `3e0`, `1.500e2`) into sign, significant digits
/// and decimal exponent.
fn sci_parts<const N: usize>(sci: &[u8]) -> Option<(bool, Stack<N>, i32)> {
    let split = sci.iter().position(|&b| b == b'e')?;
    let (mantissa, exp) = (sci.get(..split)?, sci.get(split + 1..)?);
    let exp: i32 = std::str::from_utf8(exp).ok()?.parse().ok()?;
    let (negative, mantissa) = match mantissa.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, mantissa),
    };
    let mut digits = Stack::<N>::new();
    for &b in mantissa.iter().filter(|&&b| b != b'.') {
        if !b.is_ascii_digit() {
            return None;
        }
        digits.push(b)?;
    }
    (digits.len > 0).then_some((negative, digits, exp))
}

/// CPython's choice where it differs from Rust's shortest `digits` of the finite, non-negative
/// `abs`; `None` when they agree (nearly always).
///
/// Both pick the shortest digit string that round-trips and, among those, the one nearest the
/// exact binary value. When the exact value lies exactly halfway between two such strings
/// (e.g. `1059438285926254.25`), Rust rounds up but CPython (David Gay's `dtoa`) rounds to
/// the even last digit (`1059438285926254.2`). This detects that case.
fn tie_to_even(abs: f64, digits: &[u8], exp: i32) -> Option<(Stack<32>, i32)> {
    let n = digits.len();
    let odd = digits.last().is_some_and(|d| d % 2 == 1);
    if !odd {
        return None;
    }
    // Cheap filter: a tie is exactly the shortest digits' neighbourhood midpoint, `...5` in the
    // next place, so the value rounded to three more digits must end in `500`.
    let mut probe = Stack::<48>::new();
    write!(probe, "{abs:.prec$e}", prec = n + 2).ok()?;
    let (_, probe_digits, probe_exp) = sci_parts::<32>(probe.as_bytes())?;
    if probe_exp != exp || !probe_digits.as_bytes().ends_with(b"500") {
        return None;
    }
    let midpoint = probe_digits.as_bytes().get(..=n)?;
    // Exact check (rare): an f64's decimal expansion has at most 767 significant digits.
    let exact = format!("{abs:.767e}");
    let (exact_mantissa, exact_exp) = exact.split_once('e')?;
    let exact_digits: String = exact_mantissa.chars().filter(|&c| c != '.').collect();
    if exact_exp.parse::<i32>().ok()? != exp
        || exact_digits.trim_end_matches('0').as_bytes() != midpoint
    {
        return None;
    }
    let stem = midpoint.get(..n)?;
    let (mut neighbour, neighbour_exp) = if stem == digits {
        increment_digits(digits, exp)?
    } else {
        let mut lower = Stack::<32>::from_slice(digits)?;
        if let Some(last) = lower.last_mut() {
            *last -= 1; // odd, so at least b'1'
        }
        if lower.as_bytes() != stem {
            return None;
        }
        (lower, exp)
    };
    let mut candidate = Stack::<48>::new();
    write!(
        candidate,
        "0.{}e{}",
        std::str::from_utf8(neighbour.as_bytes()).ok()?,
        neighbour_exp + 1
    )
    .ok()?;
    let round_trips = std::str::from_utf8(candidate.as_bytes())
        .ok()?
        .parse::<f64>()
        == Ok(abs);
    if !round_trips {
        return None;
    }
    let trimmed = neighbour
        .as_bytes()
        .iter()
        .rposition(|&d| d != b'0')
        .map_or(1, |last| last + 1);
    neighbour.len = trimmed;
    Some((neighbour, neighbour_exp))
}

/// `digits × 10^exp` plus one unit in the last digit, carrying into a new leading digit.
fn increment_digits(digits: &[u8], exp: i32) -> Option<(Stack<32>, i32)> {
    let mut bytes = Stack::<32>::from_slice(digits)?;
    for b in bytes.buf[..bytes.len].iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return Some((bytes, exp));
        }
    }
    let mut carried = Stack::<32>::from_slice(b"1")?;
    for &b in bytes.as_bytes() {
        carried.push(b)?;
    }
    Some((carried, exp + 1))
}

/// A fixed-capacity byte string on the stack; writes past its capacity fail.
#[derive(Clone, Copy)]
struct Stack<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Stack<N> {
    fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut out = Self::new();
        out.buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        out.len = bytes.len();
        Some(out)
    }

    fn push(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }

    fn last_mut(&mut self) -> Option<&mut u8> {
        self.buf[..self.len].last_mut()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> fmt::Write for Stack<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
