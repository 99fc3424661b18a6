//! Fuzz target: `supersocket::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| supersocket::fuzzing::config(data));
