//! Fuzz target: `supersocket::fuzzing::admin_send_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| supersocket::fuzzing::admin_send_body(data));
