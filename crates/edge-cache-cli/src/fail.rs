//! How commands end: an [`Outcome`], or a [`CliError`] printed as one line without secrets.

use std::fmt;
use std::io::{self, Write};

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked (a `get` found its entry).
    Done,
    /// A `get` found nothing: exit code 2.
    Miss,
}

/// A failed command: what to tell the operator, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    message: String,
    /// Stdout was closed (`edge-cache watch | head`): nothing to say, nothing went wrong.
    stdout_closed: bool,
}

impl CliError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            stdout_closed: false,
        }
    }

    /// Whether the reader of stdout went away, which ends the command quietly.
    pub fn is_stdout_closed(&self) -> bool {
        self.stdout_closed
    }

    /// The message as one line, with every form of the password in `url` replaced by `***`.
    ///
    /// The connecting crates already redact what they write; this is the last line of defence
    /// for text that comes from elsewhere (a driver's error quoting its input, for one).
    pub fn display_for(&self, url: &str) -> String {
        scrub(&self.message, url)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<cache_core::Error> for CliError {
    fn from(e: cache_core::Error) -> Self {
        CliError::new(e.to_string())
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::new(message)
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError {
                message: "stdout was closed".to_owned(),
                stdout_closed: true,
            }
        } else {
            CliError::new(format!("cannot write to stdout: {e}"))
        }
    }
}

/// Writes `line` and a newline to stdout and flushes, so a reader sees each line as it comes.
///
/// # Errors
/// A write error; a closed stdout gives an error for which [`CliError::is_stdout_closed`] holds.
pub fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// `text` on one line, with `url`'s password (and the URL itself) replaced by their redacted
/// forms.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(['\r', '\n'], " ");
    let redacted = cache_redis::redact(url);
    if redacted != url {
        out = out.replace(url, &redacted);
    }
    if let Some(password) = password(url) {
        out = out.replace(&format!(":{password}@"), ":***@");
        // A bare password is replaced too, unless it is so short that replacing it would mangle
        // unrelated words (and a password that short is no secret anyway).
        if password.len() >= 4 {
            out = out.replace(password, "***");
        }
    }
    out
}

/// The password in `scheme://user:password@host...`, if any.
fn password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_form_of_the_password() {
        let url = "redis://u:secret@127.0.0.1:1";
        let text = "cannot reach redis://u:secret@127.0.0.1:1\n(auth u:secret@ failed, secret)";
        let out = scrub(text, url);
        assert!(!out.contains("secret"), "{out}");
        assert!(!out.contains('\n'), "{out}");
        assert!(out.contains("redis://u:***@127.0.0.1:1"), "{out}");
    }

    #[test]
    fn scrub_leaves_text_alone_without_a_password() {
        assert_eq!(
            scrub("refused by redis://h:1", "redis://h:1"),
            "refused by redis://h:1"
        );
        assert_eq!(scrub("a b", "redis://u@h:1"), "a b");
        assert_eq!(password("redis://:pw12@h"), Some("pw12"));
        assert_eq!(password("redis://h:6379"), None);
    }
}
