//! The control connection's framing: a command ends at CR or LF, and empty lines are skipped.
//!
//! Commands end with CRLF, but a client aborting a transfer sends `ABOR\r\n` as urgent data,
//! and the kernel ends a read at the urgent mark, before the final LF: ending at the CR lets
//! the ABOR act at once instead of waiting for the next bytes. No FTP command carries a bare CR.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::filter::FilterError;

/// Cuts FTP command lines, at most `max` bytes each.
#[derive(Debug, Clone)]
pub struct CommandLines {
    max: usize,
}

impl CommandLines {
    /// Lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl Decoder for CommandLines {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        loop {
            let Some(end) = memchr::memchr2(b'\r', b'\n', src) else {
                if src.len() > self.max {
                    return Err(FilterError::TooLong { limit: self.max });
                }
                return Ok(None);
            };
            if end > self.max {
                return Err(FilterError::TooLong { limit: self.max });
            }
            let line = src.split_to(end);
            let _ = src.split_to(1);
            if !line.is_empty() {
                return Ok(Some(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_cr_or_lf_and_empty_ones_are_skipped() {
        let mut filter = CommandLines::new(8);
        let mut src = BytesMut::from(&b"USER a\r\nABOR\r"[..]);
        assert_eq!(filter.decode(&mut src).unwrap().unwrap(), "USER a");
        assert_eq!(filter.decode(&mut src).unwrap().unwrap(), "ABOR");
        assert_eq!(filter.decode(&mut src).unwrap(), None);
        src.extend_from_slice(b"\nNOOP\n");
        assert_eq!(filter.decode(&mut src).unwrap().unwrap(), "NOOP");
        src.extend_from_slice(b"123456789");
        assert!(matches!(
            filter.decode(&mut src),
            Err(FilterError::TooLong { limit: 8 })
        ));
    }
}
