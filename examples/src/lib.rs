//! Complete custom server types built on the SuperSocket library.
//!
//! [`kv`] is a key-value store that speaks a binary protocol with a fixed header; the example
//! binary `kv-server` registers it next to the built-in types and runs the standard host.

pub mod kv;
