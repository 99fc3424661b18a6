//! Entry points for the fuzz targets in `tests/fuzz/`: each feeds one input a peer controls to
//! the code that reads it, and panics when what must hold does not. Built only with the
//! `fuzzing` feature.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::config::{Config, ConfigSource};
use crate::filter::{
    BeginEndMarkFilter, Endian, FilterError, FixedHeaderFilter, FixedSizeFilter, LengthCounts, LineFilter,
    TerminatorFilter,
};
use crate::host::HostBuilder;

/// Bytes a client sends an instance, to the filter the first byte picks, with a limit the
/// second byte sets, arriving in reads the third byte sizes: no package and nothing buffered
/// beyond the limit (plus a marker).
pub fn filters(data: &[u8]) {
    let [pick, limit, read, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) + 1;
    let read = usize::from(*read % 64) + 1;
    match pick % 6 {
        0 => decode(LineFilter::new(max), stream, max, read),
        1 => decode(TerminatorFilter::new(b"##", max), stream, max, read),
        2 => decode(BeginEndMarkFilter::new(b"#", b"\n", max), stream, max, read),
        3 => decode(FixedSizeFilter::new(max, max), stream, max, read),
        4 => decode(
            FixedHeaderFilter::new(0, 2, Endian::Big, LengthCounts::Body, max),
            stream,
            max,
            read,
        ),
        _ => decode(
            FixedHeaderFilter::new(1, 4, Endian::Little, LengthCounts::Whole, max),
            stream,
            max,
            read,
        ),
    }
}

fn decode<F>(mut filter: F, stream: &[u8], max: usize, read: usize)
where
    F: Decoder<Item = BytesMut, Error = FilterError>,
{
    let mut buffer = BytesMut::new();
    for chunk in stream.chunks(read) {
        buffer.extend_from_slice(chunk);
        loop {
            match filter.decode(&mut buffer) {
                Ok(Some(package)) => assert!(package.len() <= max, "package {} over {max}", package.len()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buffer.len() <= max + 5, "{} bytes buffered over {max}", buffer.len());
    }
}

/// Config text, as TOML and as JSON: a config or a list of errors.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let builder = HostBuilder::new();
    for json in [false, true] {
        let source = ConfigSource::File("fuzz.toml".into());
        if let Err(errors) = Config::parse(text, json, source, builder.types()) {
            assert!(!errors.0.is_empty());
        }
    }
}

/// An FTP command line.
pub fn ftp_line(data: &[u8]) {
    crate::services::fuzz_ftp_line(data);
}

/// Bytes on the channel between the host and an agent.
pub fn agent_frames(data: &[u8]) {
    crate::isolation::fuzz_frames(data);
}

/// The body of an admin send.
pub fn admin_send_body(data: &[u8]) {
    crate::admin::fuzz_send_body(data);
}
