//! The built-in server types of SPEC §5, one file each.

mod chat;
mod command;
mod connector;
mod echo;
mod ftp;

#[cfg(feature = "fuzzing")]
pub(crate) use ftp::check_line as check_ftp_line;
mod gate;

use bytes::Bytes;
pub use chat::ChatService;
pub(crate) use command::COMMAND_TYPE;
pub use command::CommandService;
pub use connector::ConnectorService;
pub use echo::EchoService;
pub use ftp::FtpService;
pub use gate::GateService;

/// `KEY rest` of a line protocol request; `None` if the line is not UTF-8.
fn split_command(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    Some(line.split_once(' ').unwrap_or((line, "")))
}

/// `text` and `\r\n`, to queue for other sessions.
fn line_bytes(text: &str) -> Bytes {
    let mut line = Vec::with_capacity(text.len() + 2);
    line.extend_from_slice(text.as_bytes());
    line.extend_from_slice(b"\r\n");
    line.into()
}
