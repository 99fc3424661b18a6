//! Pipeline filters: decoders that cut a byte stream into packages (SPEC §8).
//!
//! Every filter is a [`tokio_util::codec::Decoder`] whose item is the package's bytes, and every
//! one enforces the server's `max_package_length` as soon as the buffered bytes prove a package
//! too long, so a peer can never make a session buffer more than the limit (plus one read).

mod begin_end;
mod fixed_header;
mod fixed_size;
mod passthrough;
mod terminator;

pub use begin_end::BeginEndMarkFilter;
pub use fixed_header::{Endian, FixedHeaderFilter, LengthCounts};
pub use fixed_size::FixedSizeFilter;
pub use passthrough::PassthroughFilter;
pub use terminator::{LineFilter, TerminatorFilter};

/// Why a filter could not decode the stream; the session closes with `protocol_error`.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A package exceeds `max_package_length`.
    #[error("package longer than the limit of {limit} bytes")]
    TooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The bytes do not follow the protocol.
    #[error("malformed package: {0}")]
    Malformed(&'static str),
    /// Reading the socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
pub(crate) mod testing {
    //! Feeds a filter a stream cut at every boundary, to prove decoding does not depend on how
    //! the bytes arrive.

    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::FilterError;

    /// Decodes `stream` fed in two parts split at every offset, and in one piece.
    pub fn decode_at_every_split<F>(make: impl Fn() -> F, stream: &[u8]) -> Vec<Vec<u8>>
    where
        F: Decoder<Item = BytesMut, Error = FilterError>,
    {
        let whole = decode_chunks(make(), &[stream]);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(decode_chunks(make(), &[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_chunks(make(), &bytes), whole, "byte by byte");
        whole
    }

    /// Decodes chunks arriving one after the other, as the session loop would.
    pub fn decode_chunks<F>(mut filter: F, chunks: &[&[u8]]) -> Vec<Vec<u8>>
    where
        F: Decoder<Item = BytesMut, Error = FilterError>,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(package) = filter.decode(&mut buf).expect("valid stream") {
                out.push(package.to_vec());
            }
        }
        out
    }

    /// The error a filter gives on `stream`, fed in one piece.
    pub fn first_error<F>(mut filter: F, stream: &[u8]) -> Option<FilterError>
    where
        F: Decoder<Item = BytesMut, Error = FilterError>,
    {
        let mut buf = BytesMut::from(stream);
        loop {
            match filter.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    }
}
