//! A session's outbox: messages other tasks send to it (dispatch, broadcast, the admin API),
//! bounded by `send_queue` so that a slow reader can hold only that much memory, and close
//! requests (kick, slow reader).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::CloseReason;

/// Why a message could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such session (or it has closed).
    #[error("no such session")]
    NoSession,
    /// Its queue was full: the session is a slow reader and is being closed.
    #[error("the session's send queue is full (slow reader); it is being closed")]
    QueueFull,
}

/// Bounded queue of outbound messages plus a close request, with one waker.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    /// Wakes the session when a message or a close request arrives.
    notify: Notify,
    /// 0, or 1 + the index of the requested close reason.
    close: AtomicU8,
}

const REASONS: [CloseReason; 8] = [
    CloseReason::RemoteClosing,
    CloseReason::LocalClosing,
    CloseReason::ServerShutdown,
    CloseReason::Timeout,
    CloseReason::ProtocolError,
    CloseReason::Rejected,
    CloseReason::ApplicationError,
    CloseReason::SocketError,
];

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            notify: Notify::new(),
            close: AtomicU8::new(0),
        }
    }

    /// Queues a message; a full queue closes the session as a slow reader.
    pub(crate) fn push(&self, message: Bytes) -> Result<(), SendError> {
        if self.close_requested().is_some() {
            return Err(SendError::NoSession);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.capacity {
            drop(queue);
            self.request_close(CloseReason::Timeout);
            return Err(SendError::QueueFull);
        }
        queue.push_back(message);
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Asks the session to close; the first reason asked wins.
    pub(crate) fn request_close(&self, reason: CloseReason) {
        let code = REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8 + 1;
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// The close reason asked for, if any.
    pub(crate) fn close_requested(&self) -> Option<CloseReason> {
        match self.close.load(Ordering::Acquire) {
            0 => None,
            code => Some(REASONS[usize::from(code - 1)]),
        }
    }

    /// Resolves when a message or a close request may be waiting.
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Moves every queued message into `out`; returns how many there were.
    pub(crate) fn drain_into(&self, out: &mut BytesMut) -> usize {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let count = queue.len();
        for message in queue.drain(..) {
            out.extend_from_slice(&message);
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_requests_a_close() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(Bytes::from_static(b"a")), Ok(()));
        assert_eq!(outbox.push(Bytes::from_static(b"b")), Ok(()));
        assert_eq!(outbox.push(Bytes::from_static(b"c")), Err(SendError::QueueFull));
        assert_eq!(outbox.close_requested(), Some(CloseReason::Timeout));
        let mut out = BytesMut::new();
        assert_eq!(outbox.drain_into(&mut out), 2);
        assert_eq!(&out[..], b"ab");
    }

    #[test]
    fn the_first_close_reason_wins() {
        let outbox = Outbox::new(1);
        outbox.request_close(CloseReason::LocalClosing);
        outbox.request_close(CloseReason::Timeout);
        assert_eq!(outbox.close_requested(), Some(CloseReason::LocalClosing));
        assert_eq!(outbox.push(Bytes::from_static(b"late")), Err(SendError::NoSession));
    }
}
