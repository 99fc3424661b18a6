//! Fuzz target: `supersocket::fuzzing::filters`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| supersocket::fuzzing::filters(data));
