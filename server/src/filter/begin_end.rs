//! Packages framed by a begin mark and an end mark; the package is what lies between them.

use bytes::BytesMut;
use memchr::memmem::Finder;
use tokio_util::codec::Decoder;

use super::FilterError;

/// `BEGIN body END`: hands on `body`; bytes before a begin mark are a protocol error.
#[derive(Debug, Clone)]
pub struct BeginEndMarkFilter {
    begin: Vec<u8>,
    end: Finder<'static>,
    max: usize,
    /// Body bytes already searched for the end mark.
    searched: usize,
}

impl BeginEndMarkFilter {
    /// A filter for the two marks (not empty), with bodies of at most `max` bytes.
    pub fn new(begin: &[u8], end: &[u8], max: usize) -> Self {
        assert!(
            !begin.is_empty() && !end.is_empty(),
            "begin and end marks need at least one byte"
        );
        Self {
            begin: begin.to_vec(),
            end: Finder::new(end).into_owned(),
            max,
            searched: 0,
        }
    }
}

impl Decoder for BeginEndMarkFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        let begin = self.begin.len();
        let prefix = src.len().min(begin);
        if src[..prefix] != self.begin[..prefix] {
            return Err(FilterError::Malformed("data before the begin mark"));
        }
        if src.len() <= begin {
            return Ok(None);
        }
        let end = self.end.needle().len();
        let start = self.searched.saturating_sub(end - 1);
        match self.end.find(&src[begin + start..]) {
            Some(offset) => {
                let body_len = start + offset;
                self.searched = 0;
                if body_len > self.max {
                    return Err(FilterError::TooLong { limit: self.max });
                }
                let _ = src.split_to(begin);
                let body = src.split_to(body_len);
                let _ = src.split_to(end);
                Ok(Some(body))
            }
            None => {
                self.searched = src.len() - begin;
                if self.searched > self.max + end - 1 {
                    return Err(FilterError::TooLong { limit: self.max });
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::{decode_at_every_split, first_error};

    #[test]
    fn marked_packages_split_anywhere() {
        let out = decode_at_every_split(|| BeginEndMarkFilter::new(b"<<", b">>", 16), b"<<ab>><<>><<c>d>>");
        assert_eq!(out, vec![b"ab".to_vec(), b"".to_vec(), b"c>d".to_vec()]);
    }

    #[test]
    fn junk_before_the_begin_mark_is_malformed() {
        let err = first_error(BeginEndMarkFilter::new(b"<<", b">>", 16), b"x<<a>>");
        assert!(matches!(err, Some(FilterError::Malformed(_))));
    }

    #[test]
    fn a_body_over_the_limit_fails_without_its_end_mark() {
        let filter = BeginEndMarkFilter::new(b"\x02", b"\x03", 4);
        assert!(first_error(filter.clone(), b"\x02abcd\x03").is_none());
        assert!(matches!(
            first_error(filter, b"\x02abcde"),
            Some(FilterError::TooLong { limit: 4 })
        ));
    }
}
