//! No framing: whatever bytes have arrived form one package (the `echo` type).

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::FilterError;

/// Hands on every buffered byte as one package.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassthroughFilter;

impl Decoder for PassthroughFilter {
    type Item = BytesMut;
    type Error = FilterError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FilterError> {
        Ok((!src.is_empty()).then(|| src.split()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::decode_chunks;

    #[test]
    fn every_chunk_is_one_package() {
        let out = decode_chunks(PassthroughFilter, &[b"ab", b"", b"c"]);
        assert_eq!(out, vec![b"ab".to_vec(), b"c".to_vec()]);
    }
}
