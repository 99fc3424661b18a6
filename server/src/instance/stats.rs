//! Counters of one run of an instance, updated by its accept loops and session tasks.

use std::sync::atomic::{AtomicU64, Ordering};

use supersocket_proto::agent::Counters;

/// Per-run counters.
#[derive(Debug, Default)]
pub(crate) struct InstanceStats {
    /// Sessions open now (counted at accept, so the limit holds across listeners).
    pub sessions: AtomicU64,
    pub total_sessions: AtomicU64,
    /// Connections accepted beyond `max_connections` and closed at once.
    pub rejected: AtomicU64,
    pub total_packages: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl InstanceStats {
    pub(crate) fn snapshot(&self) -> Counters {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counters {
            sessions: read(&self.sessions),
            total_sessions: read(&self.total_sessions),
            rejected: read(&self.rejected),
            total_packages: read(&self.total_packages),
            bytes_in: read(&self.bytes_in),
            bytes_out: read(&self.bytes_out),
        }
    }
}
