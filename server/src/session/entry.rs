//! What the host keeps of one open session while its task runs: identity, activity, byte
//! counters and the outbox other tasks send to it through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use supersocket_proto::SessionInfo;

use super::outbox::{Outbox, QueueLimits, Queued, SEND_PATIENCE};
use super::{CloseReason, SessionId};
use crate::outcome::{OpError, Pending};
use crate::timefmt::rfc3339;

/// The process's monotonic epoch, the base of every session's accept time.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The monotonic clock in milliseconds, read at the kernel's tick (a few ms) rather than to the
/// nanosecond: what marking a session active on every read and write needs, at a fraction of
/// the cost of an `Instant` and its arithmetic.
fn coarse_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec the call writes; CLOCK_MONOTONIC_COARSE always exists
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// One open session, shared by its task, its instance's registry and anyone sending to it.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub id: SessionId,
    pub remote: SocketAddr,
    /// The local address the peer reached.
    pub local: SocketAddr,
    /// Monotonic accept time, in nanoseconds after [`epoch`]: the base of `last_active_ms`.
    started_ns: u64,
    /// Wall-clock accept time, in milliseconds after the Unix epoch, for the API. (Two
    /// numbers of 8 bytes, where an `Instant` and a `SystemTime` take 16 each.)
    started_at_ms: u64,
    /// When bytes last moved, on the [`coarse_ms`] clock.
    last_active_ms: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Messages from other tasks, and requests to close or give buffers back.
    pub outbox: Outbox,
}

impl SessionEntry {
    pub(crate) fn new(remote: SocketAddr, local: SocketAddr, limits: QueueLimits) -> Self {
        Self {
            id: SessionId::next(),
            remote,
            local,
            started_ns: Instant::now().saturating_duration_since(epoch()).as_nanos() as u64,
            started_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            last_active_ms: AtomicU64::new(coarse_ms()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            outbox: Outbox::new(limits),
        }
    }

    /// When it was accepted (monotonic): sessions sort by it, oldest first.
    pub(crate) fn started(&self) -> Instant {
        epoch() + Duration::from_nanos(self.started_ns)
    }

    /// Records activity now.
    pub(crate) fn touch(&self) {
        self.last_active_ms.store(coarse_ms(), Ordering::Relaxed);
    }

    /// How long ago it was accepted.
    pub(crate) fn age(&self) -> Duration {
        self.started().elapsed()
    }

    /// When bytes last moved.
    pub(crate) fn last_active(&self) -> Instant {
        let ago = coarse_ms().saturating_sub(self.last_active_ms.load(Ordering::Relaxed));
        let now = Instant::now();
        now.checked_sub(Duration::from_millis(ago))
            .unwrap_or(now)
            .max(self.started())
    }

    /// Queues `message` for the peer. It is placed in the session's order now: behind
    /// everything submitted before, ahead of everything after. When the queue is full the
    /// outcome waits for room, at most [`SEND_PATIENCE`]; a queue that stays full belongs to a
    /// slow reader, which is closed.
    pub(crate) fn submit(self: &Arc<Self>, message: Bytes) -> Pending<()> {
        match self.outbox.queue(message) {
            Queued::Now => Pending::ready(Ok(())),
            Queued::Refused(error) => Pending::ready(Err(error)),
            Queued::Later(admitted) => {
                let entry = self.clone();
                // From now, however late the sender awaits the outcome.
                let deadline = tokio::time::Instant::now() + SEND_PATIENCE;
                Pending::waiting(async move {
                    match tokio::time::timeout_at(deadline, admitted).await {
                        Ok(Ok(outcome)) => outcome,
                        // The session ended without taking it.
                        Ok(Err(_)) => Err(OpError::NoSession),
                        Err(_) => {
                            entry.outbox.close(CloseReason::Timeout);
                            Err(OpError::QueueFull)
                        }
                    }
                })
            }
        }
    }

    /// The `Session` JSON of the admin API.
    pub(crate) fn info(&self) -> SessionInfo {
        let started_at = SystemTime::UNIX_EPOCH + Duration::from_millis(self.started_at_ms);
        let last_active = started_at + self.last_active().saturating_duration_since(self.started());
        SessionInfo {
            id: self.id.to_string(),
            remote: self.remote.to_string(),
            local: self.local.to_string(),
            started_at: rfc3339(started_at),
            last_active_at: rfc3339(last_active),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}
