//! Packages with a fixed header that holds the length: a 1, 2, 4 or 8 byte field, big or little
//! endian, at an offset, counting the body only or the whole package.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::FilterError;

/// Byte order of the length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Most significant byte first (network order).
    Big,
    /// Least significant byte first.
    Little,
}

/// What the length field counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthCounts {
    /// The bytes after the header.
    Body,
    /// The whole package, header included.
    Whole,
}

/// Header of `offset + width` bytes whose length field sits at `offset`; the package handed on
/// is the whole package, header included.
#[derive(Debug, Clone, Copy)]
pub struct FixedHeaderFilter {
    offset: usize,
    width: usize,
    endian: Endian,
    counts: LengthCounts,
    max: usize,
}

impl FixedHeaderFilter {
    /// A filter whose length field is `width` bytes (1, 2, 4 or 8) at `offset`.
    pub fn new(offset: usize, width: usize, endian: Endian, counts: LengthCounts, max: usize) -> Self {
        assert!(matches!(width, 1 | 2 | 4 | 8), "a length field is 1, 2, 4 or 8 bytes");
        Self {
            offset,
            width,
            endian,
            counts,
            max,
        }
    }

    fn header_len(&self) -> usize {
        self.offset + self.width
    }

    fn field(&self, src: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let field = &src[self.offset..self.header_len()];
        match self.endian {
            Endian::Big => {
                bytes[8 - self.width..].copy_from_slice(field);
                u64::from_be_bytes(bytes)
            }
            Endian::Little => {
                bytes[..self.width].copy_from_slice(field);
                u64::from_le_bytes(bytes)
            }
        }
    }
}

impl Decoder for FixedHeaderFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        let header = self.header_len();
        if src.len() < header {
            return Ok(None);
        }
        let field = self.field(src);
        let total = match self.counts {
            LengthCounts::Body => field.checked_add(header as u64),
            LengthCounts::Whole if field < header as u64 => {
                return Err(FilterError::Malformed("length field smaller than the header"));
            }
            LengthCounts::Whole => Some(field),
        };
        let total = match total.and_then(|t| usize::try_from(t).ok()) {
            Some(total) if total <= self.max => total,
            _ => return Err(FilterError::TooLong { limit: self.max }),
        };
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::{decode_at_every_split, first_error};

    #[test]
    fn big_endian_body_length_after_a_type_byte() {
        // [type][len u16 BE][body]
        let stream = b"\x01\x00\x03abc\x02\x00\x00\x03\x00\x01z";
        let out = decode_at_every_split(
            || FixedHeaderFilter::new(1, 2, Endian::Big, LengthCounts::Body, 64),
            stream,
        );
        assert_eq!(
            out,
            vec![
                b"\x01\x00\x03abc".to_vec(),
                b"\x02\x00\x00".to_vec(),
                b"\x03\x00\x01z".to_vec()
            ]
        );
    }

    #[test]
    fn little_endian_whole_length_of_every_width() {
        for width in [1usize, 2, 4, 8] {
            let mut stream = Vec::new();
            for body in [&b"hello"[..], b"", b"xy"] {
                let total = (width + body.len()) as u64;
                stream.extend_from_slice(&total.to_le_bytes()[..width]);
                stream.extend_from_slice(body);
            }
            let make = || FixedHeaderFilter::new(0, width, Endian::Little, LengthCounts::Whole, 64);
            let out = decode_at_every_split(make, &stream);
            assert_eq!(out.len(), 3, "width {width}");
            assert_eq!(&out[0][width..], b"hello");
        }
    }

    #[test]
    fn a_length_over_the_limit_fails_before_the_body_arrives() {
        let filter = FixedHeaderFilter::new(0, 4, Endian::Big, LengthCounts::Body, 1024);
        let err = first_error(filter, &0x0010_0000u32.to_be_bytes());
        assert!(matches!(err, Some(FilterError::TooLong { limit: 1024 })));
        let filter = FixedHeaderFilter::new(0, 8, Endian::Big, LengthCounts::Body, 1024);
        assert!(first_error(filter, &u64::MAX.to_be_bytes()).is_some());
    }

    #[test]
    fn a_whole_length_shorter_than_the_header_is_malformed() {
        let filter = FixedHeaderFilter::new(0, 2, Endian::Big, LengthCounts::Whole, 64);
        assert!(matches!(
            first_error(filter, b"\x00\x01"),
            Some(FilterError::Malformed(_))
        ));
    }
}
