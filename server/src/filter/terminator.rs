//! Packages that end with a terminator: any byte string, or a line (`\n`, with a preceding `\r`
//! dropped).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::FilterError;

/// Packages end with a terminator byte string, which is not part of the package.
#[derive(Debug, Clone)]
pub struct TerminatorFilter {
    terminator: Terminator,
    max: usize,
    /// Bytes already searched without finding the terminator, so long packages are not
    /// re-scanned from the start on every read.
    searched: usize,
}

impl TerminatorFilter {
    /// A filter for `terminator` (not empty) with packages of at most `max` bytes.
    pub fn new(terminator: &[u8], max: usize) -> Self {
        assert!(!terminator.is_empty(), "a terminator needs at least one byte");
        let terminator = match terminator {
            [byte] => Terminator::Byte(*byte),
            bytes => Terminator::Bytes(bytes.into()),
        };
        Self {
            terminator,
            max,
            searched: 0,
        }
    }
}

/// What ends a package. Every session holds its filter, so this keeps to the bytes themselves
/// (a prepared searcher is over 300 bytes): one byte is found with `memchr`, a longer string
/// with `memmem`.
#[derive(Debug, Clone)]
enum Terminator {
    Byte(u8),
    Bytes(Box<[u8]>),
}

impl Terminator {
    fn len(&self) -> usize {
        match self {
            Self::Byte(_) => 1,
            Self::Bytes(bytes) => bytes.len(),
        }
    }

    fn find(&self, haystack: &[u8]) -> Option<usize> {
        match self {
            Self::Byte(byte) => memchr::memchr(*byte, haystack),
            Self::Bytes(bytes) => memchr::memmem::find(haystack, bytes),
        }
    }
}

impl Decoder for TerminatorFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        let needle = self.terminator.len();
        let start = self.searched.saturating_sub(needle - 1);
        match self.terminator.find(&src[start..]) {
            Some(offset) => {
                let end = start + offset;
                self.searched = 0;
                if end > self.max {
                    return Err(FilterError::TooLong { limit: self.max });
                }
                let package = src.split_to(end);
                let _ = src.split_to(needle);
                Ok(Some(package))
            }
            None => {
                self.searched = src.len();
                // A package longer than the limit is certain once this much is buffered.
                if src.len() > self.max + needle - 1 {
                    return Err(FilterError::TooLong { limit: self.max });
                }
                Ok(None)
            }
        }
    }
}

/// Line packages: end with `\n`, a preceding `\r` is dropped.
#[derive(Debug, Clone)]
pub struct LineFilter(TerminatorFilter);

impl LineFilter {
    /// A line filter with lines of at most `max` bytes (the `\r` counted).
    pub fn new(max: usize) -> Self {
        Self(TerminatorFilter::new(b"\n", max))
    }
}

impl Decoder for LineFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        Ok(self.0.decode(src)?.map(|mut line| {
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            line
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::{decode_at_every_split, first_error};

    #[test]
    fn lines_split_anywhere_decode_the_same() {
        let out = decode_at_every_split(|| LineFilter::new(16), b"PING\r\nADD 1 2\n\nlast\r\n");
        assert_eq!(
            out,
            vec![b"PING".to_vec(), b"ADD 1 2".to_vec(), b"".to_vec(), b"last".to_vec()]
        );
    }

    #[test]
    fn multi_byte_terminator_split_anywhere() {
        let out = decode_at_every_split(|| TerminatorFilter::new(b"##", 8), b"a##bc####d#e##");
        assert_eq!(out, vec![b"a".to_vec(), b"bc".to_vec(), b"".to_vec(), b"d#e".to_vec()]);
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_more_byte_fails() {
        assert!(first_error(LineFilter::new(4), b"abcd\n").is_none());
        assert!(matches!(
            first_error(LineFilter::new(4), b"abcde\n"),
            Some(FilterError::TooLong { limit: 4 })
        ));
    }

    #[test]
    fn an_unterminated_line_fails_once_it_passes_the_limit() {
        let mut filter = LineFilter::new(4);
        let mut buf = BytesMut::from(&b"abcd"[..]);
        assert!(filter.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"e");
        assert!(matches!(filter.decode(&mut buf), Err(FilterError::TooLong { .. })));
    }
}
