//! Counters of one instance, kept across its runs for the host's lifetime.

use std::sync::atomic::AtomicU64;

/// Per-instance counters, updated by the accept loop and the session tasks.
#[derive(Debug, Default)]
pub(crate) struct InstanceStats {
    /// Sessions open now (counted at accept, so the limit holds across listeners).
    pub sessions: AtomicU64,
    /// Sessions accepted and served.
    pub total_sessions: AtomicU64,
    /// Connections accepted beyond `max_connections` and closed at once.
    pub rejected: AtomicU64,
    /// Packages decoded.
    pub total_packages: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
}
