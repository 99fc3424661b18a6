//! Fuzz target: `supersocket::fuzzing::agent_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| supersocket::fuzzing::agent_frames(data));
