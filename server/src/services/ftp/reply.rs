//! FTP replies as bytes for the control connection: `code text` lines and multi-line replies.

use std::fmt::Display;

use bytes::Bytes;

/// `code text\r\n`.
pub fn line(code: u16, text: impl Display) -> Bytes {
    format!("{code} {text}\r\n").into()
}

/// The 421 to a client address with too many recent failed logins (the connection closes).
pub fn banned() -> Bytes {
    line(421, "Too many failed logins from your address; try again later.")
}

/// `code-first\r\n`, each of `lines` indented by a space, then `code last\r\n` (RFC 959 §4.2).
pub fn multi(code: u16, first: &str, lines: &[impl AsRef<str>], last: &str) -> Bytes {
    let mut text = format!("{code}-{first}\r\n");
    for line in lines {
        text.push(' ');
        text.push_str(line.as_ref());
        text.push_str("\r\n");
    }
    text.push_str(&format!("{code} {last}\r\n"));
    text.into()
}

/// What a client sent, echoed in a reply: at most `max` characters of it.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}

/// A path in a 257 reply: quoted, with quotes inside doubled.
pub fn quoted(path: &impl Display) -> String {
    format!("\"{}\"", path.to_string().replace('"', "\"\""))
}
