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

/// Decodes `chunks` arriving one after another, as a session would, and checks what must hold
/// whatever a peer sends: no package over `max`, nothing buffered beyond `max + slack` (a
/// marker's length). The packages, and whether the stream failed. For the property tests and
/// the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_decoding<'a, F>(
    mut filter: F,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
    slack: usize,
) -> (Vec<Vec<u8>>, bool)
where
    F: tokio_util::codec::Decoder<Item = bytes::BytesMut, Error = FilterError>,
{
    let mut buf = bytes::BytesMut::new();
    let mut packages = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match filter.decode(&mut buf) {
                Ok(Some(package)) => {
                    assert!(package.len() <= max, "a package of {} over {max}", package.len());
                    packages.push(package.to_vec());
                }
                Ok(None) => break,
                Err(_) => return (packages, true),
            }
        }
        assert!(
            buf.len() <= max + slack,
            "{} bytes buffered over a limit of {max}",
            buf.len()
        );
    }
    (packages, false)
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

#[cfg(test)]
mod properties {
    //! Every filter on any bytes, cut anywhere: no panic; no package, and nothing buffered,
    //! beyond the limit; the same packages however the bytes arrive.

    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    use super::*;

    /// `stream` cut at `cuts` (offsets taken modulo its length).
    fn cut<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut offsets: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for offset in offsets.into_iter().chain([stream.len()]) {
            chunks.push(&stream[start..offset]);
            start = offset;
        }
        chunks
    }

    fn same_however_cut<F>(
        make: impl Fn() -> F,
        stream: &[u8],
        cuts: &[usize],
        max: usize,
        slack: usize,
    ) -> Result<(), TestCaseError>
    where
        F: Decoder<Item = BytesMut, Error = FilterError>,
    {
        let whole = check_decoding(make(), [stream], max, slack);
        let pieces = check_decoding(make(), cut(stream, cuts), max, slack);
        // Cut up, a stream may fail sooner (a long package is proven long on fewer bytes), so
        // compare the packages both gave.
        let common = whole.0.len().min(pieces.0.len());
        prop_assert_eq!(&whole.0[..common], &pieces.0[..common]);
        if !whole.1 && !pieces.1 {
            prop_assert_eq!(whole.0, pieces.0);
        }
        Ok(())
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        // Bytes that often are markers, so that packages do form.
        proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r'), Just(b'#'), Just(0u8)],
            0..600,
        )
    }

    fn cuts() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(any::<usize>(), 0..8)
    }

    proptest! {
        #[test]
        fn lines(stream in stream(), cuts in cuts(), max in 1usize..64) {
            same_however_cut(|| LineFilter::new(max), &stream, &cuts, max, 2)?;
        }

        #[test]
        fn terminators(stream in stream(), cuts in cuts(), max in 1usize..64, terminator in prop_oneof![Just(&b"##"[..]), Just(&b"\r\n"[..]), Just(&b"#"[..])]) {
            same_however_cut(|| TerminatorFilter::new(terminator, max), &stream, &cuts, max, terminator.len())?;
        }

        #[test]
        fn begin_end_marks(stream in stream(), cuts in cuts(), max in 1usize..64) {
            same_however_cut(|| BeginEndMarkFilter::new(b"#", b"\n", max), &stream, &cuts, max, 2)?;
        }

        #[test]
        fn fixed_sizes(stream in stream(), cuts in cuts(), size in 1usize..32) {
            same_however_cut(|| FixedSizeFilter::new(size, size), &stream, &cuts, size, 0)?;
        }

        #[test]
        fn fixed_headers(
            stream in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in cuts(),
            max in 4usize..128,
            width in prop_oneof![Just(1usize), Just(2), Just(4)],
            big in any::<bool>(),
            whole in any::<bool>(),
        ) {
            let endian = if big { Endian::Big } else { Endian::Little };
            let counts = if whole { LengthCounts::Whole } else { LengthCounts::Body };
            same_however_cut(|| FixedHeaderFilter::new(0, width, endian, counts, max), &stream, &cuts, max, width)?;
        }
    }
}
