//! Complete custom server types built on the SuperSocket library.
//!
//! [`kv`] is a key-value store that speaks a binary protocol with a fixed header; [`burn`]
//! spins the CPU on request, to show isolation at work. The example binary `kv-server`
//! registers both next to the built-in types and runs the standard host.

pub mod burn;
pub mod kv;
