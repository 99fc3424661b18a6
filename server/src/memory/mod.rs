//! The host's memory: small over-aligned blocks from slabs of their own ([`HostAllocator`]),
//! and freed memory handed back to the operating system ([`start_trimming`]).

mod slab;
mod trim;

pub use slab::HostAllocator;
pub(crate) use trim::start_trimming;
