//! The idle sweeper: one task per running instance that looks over its sessions a few times a
//! second and closes those idle for `idle_timeout` (reason `timeout`), and asks sessions quiet
//! for [`BUFFER_RELEASE`] to give their buffers back.
//!
//! One sweeper instead of a timer in every session keeps an idle session small: a timer is
//! more than a hundred bytes, held for the session's whole life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CloseReason, SessionRegistry};

/// A session quiet for this long frees its read and write buffers.
const BUFFER_RELEASE: Duration = Duration::from_secs(2);
/// The shortest pause between sweeps.
const MIN_TICK: Duration = Duration::from_millis(10);

/// How often to sweep: a quarter of the idle timeout (so a session closes at most a quarter
/// late), and at least twice per [`BUFFER_RELEASE`].
fn tick(idle_timeout: Option<Duration>) -> Duration {
    let release = BUFFER_RELEASE / 2;
    idle_timeout.map_or(release, |t| (t / 4).clamp(MIN_TICK, release))
}

/// Sweeps `sessions` until the task is dropped (the instance stops); `idle_timeout` says the
/// instance's idle timeout now (it may change while the instance runs).
pub(crate) async fn run(sessions: Arc<SessionRegistry>, idle_timeout: impl Fn() -> Option<Duration>) {
    loop {
        tokio::time::sleep(tick(idle_timeout())).await;
        sweep(&sessions, idle_timeout(), Instant::now());
    }
}

/// One look over every session.
fn sweep(sessions: &SessionRegistry, idle_timeout: Option<Duration>, now: Instant) {
    sessions.for_each(|session| {
        let quiet = now.saturating_duration_since(session.last_active());
        if idle_timeout.is_some_and(|t| quiet >= t) {
            session.outbox.close(CloseReason::Timeout);
        } else if quiet >= BUFFER_RELEASE {
            session.outbox.request_release();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{QueueLimits, SessionEntry};

    #[test]
    fn the_tick_follows_the_idle_timeout_within_bounds() {
        assert_eq!(tick(None), Duration::from_secs(1));
        assert_eq!(tick(Some(Duration::from_millis(400))), Duration::from_millis(100));
        assert_eq!(tick(Some(Duration::from_millis(1))), MIN_TICK);
        assert_eq!(tick(Some(Duration::from_secs(300))), Duration::from_secs(1));
    }

    #[test]
    fn a_sweep_closes_the_idle_and_asks_the_quiet_to_release() {
        let registry = SessionRegistry::default();
        let address = "127.0.0.1:1".parse().unwrap();
        let limits = QueueLimits {
            messages: 4,
            bytes: 1024,
        };
        let session = Arc::new(SessionEntry::new(address, address, limits));
        registry.insert(session.clone());
        let born = Instant::now();
        session.outbox.note_buffers_held();
        sweep(&registry, Some(Duration::from_secs(5)), born + Duration::from_secs(1));
        assert!(!session.outbox.take_release(), "not quiet long enough");
        sweep(&registry, Some(Duration::from_secs(5)), born + BUFFER_RELEASE * 2);
        assert!(session.outbox.take_release(), "quiet: asked to release its buffers");
        assert_eq!(session.outbox.close_requested(), None);
        sweep(&registry, Some(Duration::from_secs(5)), born + Duration::from_secs(6));
        assert_eq!(session.outbox.close_requested(), Some(CloseReason::Timeout));
    }
}
