//! Fuzz target: `supersocket::fuzzing::ftp_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| supersocket::fuzzing::ftp_line(data));
