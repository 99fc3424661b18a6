//! Packages of one fixed size.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::FilterError;

/// Every package is exactly `size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct FixedSizeFilter {
    size: usize,
    max: usize,
}

impl FixedSizeFilter {
    /// Packages of `size` bytes (not 0); a size above `max` fails at the first byte.
    pub fn new(size: usize, max: usize) -> Self {
        assert!(size > 0, "a fixed package size must be at least 1");
        Self { size, max }
    }
}

impl Decoder for FixedSizeFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        if self.size > self.max && !src.is_empty() {
            return Err(FilterError::TooLong { limit: self.max });
        }
        Ok((src.len() >= self.size).then(|| src.split_to(self.size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::{decode_at_every_split, first_error};

    #[test]
    fn fixed_packages_split_anywhere() {
        let out = decode_at_every_split(|| FixedSizeFilter::new(3, 8), b"abcdefgh");
        assert_eq!(out, vec![b"abc".to_vec(), b"def".to_vec()]);
    }

    #[test]
    fn a_size_over_the_limit_fails() {
        assert!(matches!(
            first_error(FixedSizeFilter::new(9, 8), b"a"),
            Some(FilterError::TooLong { limit: 8 })
        ));
    }
}
