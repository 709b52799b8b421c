//! The fleet's event keys on the command line: made by `keygen`, read from a file or an
//! environment variable (never from an argument, which `ps` shows to every user), and used by
//! every node this process starts and by `verify`.
//!
//! A key file holds one key per line, `<key id>:<hex secret>` (what `keygen` prints); the first
//! key signs, every key verifies. Blank lines and lines starting with `#` are skipped.

use std::io::Read as _;
use std::path::Path;

use cache_core::signing::{EventKeys, SignatureMode, SigningKey, Verdict, MIN_SECRET_BYTES};

use crate::fail::{CliError, Outcome};

/// The environment variable holding the key lines themselves (instead of a file).
pub const KEYS_ENV: &str = "EDGE_CACHE_KEYS";

/// A new key line for `id`: 32 bytes from the operating system's random source, in hex.
///
/// # Errors
/// An id `SigningKey` refuses, or no randomness from the OS.
pub fn keygen(id: &str) -> Result<String, CliError> {
    let mut secret = [0u8; MIN_SECRET_BYTES];
    getrandom::fill(&mut secret)
        .map_err(|e| CliError::new(format!("no randomness from the operating system: {e}")))?;
    // Checks the id the way every node will.
    SigningKey::new(id, secret.to_vec())?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{id}:{hex}"))
}

/// The key ring from `file` or, failing that, from [`KEYS_ENV`]; `None` when neither is set.
///
/// # Errors
/// An unreadable file, or a line that is not `<id>:<hex of at least 32 bytes>`. Messages give
/// the line number, never the line.
pub fn load(file: Option<&Path>, accept_unsigned: bool) -> Result<Option<EventKeys>, CliError> {
    let (text, origin) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::new(format!("cannot read the key file {}: {e}", path.display()))
            })?;
            (text, format!("key file {}", path.display()))
        }
        None => match std::env::var(KEYS_ENV) {
            Ok(text) => (text, KEYS_ENV.to_owned()),
            Err(_) if accept_unsigned => {
                return Err(CliError::new(
                    "--accept-unsigned needs keys (--keys-file or EDGE_CACHE_KEYS)",
                ))
            }
            Err(_) => return Ok(None),
        },
    };
    let mut keys: Vec<SigningKey> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line
            .split_once(':')
            .ok_or_else(|| CliError::new("not <key id>:<hex secret>"))
            .and_then(|(id, secret)| Ok(SigningKey::from_hex(id, secret)?))
            .map_err(|e| CliError::new(format!("{origin}, line {}: {e}", number + 1)))?;
        keys.push(key);
    }
    let mut keys = keys.into_iter();
    let signer = keys
        .next()
        .ok_or_else(|| CliError::new(format!("{origin} holds no key")))?;
    let mut ring = keys.fold(EventKeys::new(signer), EventKeys::verify_with);
    if accept_unsigned {
        ring = ring.mode(SignatureMode::AcceptUnsigned);
    }
    Ok(Some(ring))
}

/// `verify`: checks the message on stdin against the ring and says which key signed it.
///
/// # Errors
/// No keys configured, or the message is refused (the reason is the error).
pub fn verify(ring: Option<&EventKeys>) -> Result<Outcome, CliError> {
    let ring = ring.ok_or_else(|| {
        CliError::new("verify needs the fleet's keys: --keys-file PATH or EDGE_CACHE_KEYS")
    })?;
    let mut message = Vec::new();
    std::io::stdin()
        .take(cache_core::MAX_EVENT_BYTES as u64 + 1)
        .read_to_end(&mut message)
        .map_err(|e| CliError::new(format!("cannot read the message on stdin: {e}")))?;
    // A trailing newline from `echo` or a capture is not part of the message.
    while message.last().is_some_and(u8::is_ascii_whitespace) {
        message.pop();
    }
    if message.len() > cache_core::MAX_EVENT_BYTES {
        return Err(CliError::new(format!(
            "refused: over the {}-byte limit of an event",
            cache_core::MAX_EVENT_BYTES
        )));
    }
    match ring.verify(&message) {
        Ok(Verdict::Signed { key_id }) => {
            crate::fail::print_line(&format!("signed by {key_id}"))?;
            Ok(Outcome::Done)
        }
        Ok(Verdict::Unsigned) => {
            crate::fail::print_line("unsigned (accepted: --accept-unsigned)")?;
            Ok(Outcome::Done)
        }
        Err(rejection) => Err(CliError::new(format!("refused: {rejection}"))),
    }
}
