//! Entry points for the fuzz targets in `tests/fuzz/`: each feeds one input a peer controls to
//! the check its module's property tests run, which panics when what must hold does not.
//! Built only with the `fuzzing` feature.

use crate::filter::{
    BeginEndMarkFilter, Endian, FixedHeaderFilter, FixedSizeFilter, LengthCounts, LineFilter, TerminatorFilter,
    check_decoding,
};

/// Bytes a client sends an instance, to the filter the first byte picks, with a limit the
/// second byte sets, arriving in reads the third byte sizes.
pub fn filters(data: &[u8]) {
    let [pick, limit, read, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) + 1;
    let chunks = stream.chunks(usize::from(*read % 64) + 1);
    match pick % 6 {
        0 => drop(check_decoding(LineFilter::new(max), chunks, max, 2)),
        1 => drop(check_decoding(TerminatorFilter::new(b"##", max), chunks, max, 2)),
        2 => drop(check_decoding(
            BeginEndMarkFilter::new(b"#", b"\n", max),
            chunks,
            max,
            2,
        )),
        3 => drop(check_decoding(FixedSizeFilter::new(max, max), chunks, max, 0)),
        4 => {
            let filter = FixedHeaderFilter::new(0, 2, Endian::Big, LengthCounts::Body, max);
            drop(check_decoding(filter, chunks, max, 2));
        }
        _ => {
            let filter = FixedHeaderFilter::new(1, 4, Endian::Little, LengthCounts::Whole, max);
            drop(check_decoding(filter, chunks, max, 5));
        }
    }
}

/// Config text, as TOML and as JSON.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::config::check_reading(text);
    }
}

/// An FTP command line.
pub fn ftp_line(data: &[u8]) {
    crate::services::check_ftp_line(data);
}

/// Bytes on the channel between the host and an agent.
pub fn agent_frames(data: &[u8]) {
    crate::isolation::check_frames(data);
}

/// The body of an admin send.
pub fn admin_send_body(data: &[u8]) {
    crate::admin::check_send_body(data);
}
