//! A session's outbox: messages other tasks send to it (dispatch, broadcast, the admin API),
//! bounded by `send_queue` so that a slow reader can hold only that much memory, close
//! requests (kick, slow reader, idle timeout) and requests to give idle buffers back.
//!
//! A sender that finds the queue full waits for room (backpressure: a burst, or a session task
//! that has not been scheduled yet); a queue that stays full for [`SEND_PATIENCE`] belongs to a
//! slow reader, which is closed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::CloseReason;

/// Why a message could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such session (or it has closed).
    #[error("no such session")]
    NoSession,
    /// Its queue stayed full: the session is a slow reader and is being closed.
    #[error("the session's send queue stayed full (slow reader); it is being closed")]
    QueueFull,
}

/// Bounded queue of outbound messages plus a close request, with one waker.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    /// Wakes the session when a message or a close request arrives.
    notify: Notify,
    /// Wakes senders waiting for room when the session empties the queue.
    room: Notify,
    /// 0, or 1 + the index of the requested close reason.
    close: AtomicU8,
    /// Whether the session holds buffers, and whether it was asked to release them.
    buffers: AtomicU8,
}

/// `Outbox::buffers`: the session holds buffers.
const HOLDING: u8 = 1;
/// `Outbox::buffers`: the session was asked to release its buffers.
const RELEASE: u8 = 2;

/// How long a sender waits for room in a full queue before the session counts as a slow
/// reader.
pub const SEND_PATIENCE: Duration = Duration::from_secs(1);

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
            room: Notify::new(),
            close: AtomicU8::new(0),
            buffers: AtomicU8::new(0),
        }
    }

    /// Queues a message, waiting up to [`SEND_PATIENCE`] for room; a queue that stays full
    /// closes the session as a slow reader.
    pub(crate) async fn push(&self, message: Bytes) -> Result<(), SendError> {
        let deadline = tokio::time::Instant::now() + SEND_PATIENCE;
        loop {
            // Registered before the attempt, so room made in between is not missed.
            let room = self.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            match self.try_push(&message) {
                Err(SendError::QueueFull) => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.request_close(CloseReason::Timeout);
                return Err(SendError::QueueFull);
            }
        }
    }

    fn try_push(&self, message: &Bytes) -> Result<(), SendError> {
        if self.close_requested().is_some() {
            return Err(SendError::NoSession);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.capacity {
            return Err(SendError::QueueFull);
        }
        queue.push_back(message.clone());
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

    /// Resolves when a message or a request may be waiting.
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Makes the next [`wait`](Self::wait) resolve at once (for a waker consumed elsewhere).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// The session says it holds buffers (so a sweep may ask for them back).
    pub(crate) fn note_buffers_held(&self) {
        if self.buffers.load(Ordering::Relaxed) == 0 {
            self.buffers.store(HOLDING, Ordering::Relaxed);
        }
    }

    /// Asks a session that holds buffers to release them.
    pub(crate) fn request_release(&self) {
        let asked = self
            .buffers
            .compare_exchange(HOLDING, RELEASE, Ordering::AcqRel, Ordering::Relaxed);
        if asked.is_ok() {
            self.notify.notify_one();
        }
    }

    /// Whether the session was asked to release its buffers; clears the request.
    pub(crate) fn take_release(&self) -> bool {
        self.buffers
            .compare_exchange(RELEASE, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Moves every queued message into `out`; returns how many there were.
    pub(crate) fn drain_into(&self, out: &mut BytesMut) -> usize {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let count = queue.len();
        for message in queue.drain(..) {
            out.extend_from_slice(&message);
        }
        drop(queue);
        if count > 0 {
            self.room.notify_waiters();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokio_test_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_waits_for_room_then_closes_a_slow_reader() {
        let outbox = std::sync::Arc::new(Outbox::new(2));
        assert_eq!(outbox.push(Bytes::from_static(b"a")).await, Ok(()));
        assert_eq!(outbox.push(Bytes::from_static(b"b")).await, Ok(()));
        // The session drains while a third sender waits: the sender gets in.
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(Bytes::from_static(b"c")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = BytesMut::new();
        assert_eq!(outbox.drain_into(&mut out), 2);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(outbox.close_requested(), None);
        // Nobody drains: after the patience, the session is closed as a slow reader.
        assert_eq!(outbox.push(Bytes::from_static(b"d")).await, Ok(()));
        let began = tokio::time::Instant::now();
        assert_eq!(outbox.push(Bytes::from_static(b"e")).await, Err(SendError::QueueFull));
        assert_eq!(began.elapsed(), SEND_PATIENCE);
        assert_eq!(outbox.close_requested(), Some(CloseReason::Timeout));
        outbox.drain_into(&mut out);
        assert_eq!(&out[..], b"abcd");
    }

    #[test]
    fn the_first_close_reason_wins() {
        let outbox = Outbox::new(1);
        outbox.request_close(CloseReason::LocalClosing);
        outbox.request_close(CloseReason::Timeout);
        assert_eq!(outbox.close_requested(), Some(CloseReason::LocalClosing));
        let late = tokio_test_block_on(outbox.push(Bytes::from_static(b"late")));
        assert_eq!(late, Err(SendError::NoSession));
    }
}
