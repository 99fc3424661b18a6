//! A session's outbox: messages other tasks send to it (dispatch, broadcast, the admin API),
//! bounded by `send_queue` messages and `send_queue_bytes` bytes so that a slow reader holds
//! only that much; close requests (kick, slow reader, idle timeout); requests to give idle
//! buffers back.
//!
//! Messages that do not fit wait in line, first come first served: every message keeps the
//! place it was given when it was submitted, whoever sent it and whenever its sender awaits
//! the outcome. A message that waits longer than [`SEND_PATIENCE`] marks a slow reader, which
//! is closed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::CloseReason;
use crate::outcome::OpError;

/// How long a message may wait for room before its session counts as a slow reader.
pub const SEND_PATIENCE: Duration = Duration::from_secs(1);

/// How much an outbox queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// Messages queued.
    pub messages: usize,
    /// Bytes queued (one message larger than this still passes an empty queue).
    pub bytes: usize,
}

/// Bounded queue of outbound messages, the line of messages waiting for room, a close request,
/// and the waker of the session.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    limits: QueueLimits,
    /// Wakes the session when a message or a request arrives.
    notify: Signal,
    /// 0, or the code of the requested close reason.
    close: AtomicU8,
    /// Whether the session holds buffers, and whether it was asked to release them.
    buffers: AtomicU8,
    /// Set when the instance stops: the session drains. (Its own flag: a look at the stop's
    /// token would lock a mutex every session of the instance shares.)
    stopping: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Bytes>,
    /// Bytes in `ready`.
    bytes: usize,
    /// Messages that did not fit, in the order they came; boxed, as most sessions never have
    /// any and every session holds its queue.
    line: Option<Box<Line>>,
    /// Set when the session writes its last: nothing more is taken.
    sealed: bool,
}

#[derive(Debug, Default)]
struct Line {
    waiters: VecDeque<Waiter>,
    /// Bytes in `waiters`.
    bytes: usize,
}

#[derive(Debug)]
struct Waiter {
    message: Bytes,
    admitted: oneshot::Sender<Result<(), OpError>>,
}

/// Wakes the one task that waits on it, the session; given while the session does not wait,
/// it is kept for its next wait (as `Notify::notify_one`). Waiting on it takes no future of
/// its own, so an idle session's wait stays a few references.
#[derive(Debug, Default)]
struct Signal {
    given: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn give(&self) {
        self.given.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.given.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        {
            let mut waker = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        // Given while the waker was being stored: it may have found none to wake.
        if self.given.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Where [`Outbox::queue`] put a message.
pub(super) enum Queued {
    /// In the queue.
    Now,
    /// In line for room; the receiver learns when it gets in (or why not).
    Later(oneshot::Receiver<Result<(), OpError>>),
    /// Not taken.
    Refused(OpError),
}

/// `Outbox::buffers`: the session holds buffers.
const HOLDING: u8 = 1;
/// `Outbox::buffers`: the session was asked to release its buffers.
const RELEASE: u8 = 2;

impl Queue {
    fn fits(&self, message: &Bytes, limits: QueueLimits) -> bool {
        self.ready.is_empty() || (self.ready.len() < limits.messages && self.bytes + message.len() <= limits.bytes)
    }

    fn push(&mut self, message: Bytes) {
        self.bytes += message.len();
        self.ready.push_back(message);
    }

    /// Lets waiting messages in, first come first served, while they fit; true if any did.
    fn admit(&mut self, limits: QueueLimits) -> bool {
        let mut admitted = false;
        while let Some(waiter) = self.line.as_ref().and_then(|line| line.waiters.front()) {
            if !self.fits(&waiter.message, limits) {
                break;
            }
            let Some(line) = self.line.as_mut() else { break };
            let Some(waiter) = line.waiters.pop_front() else { break };
            line.bytes -= waiter.message.len();
            if line.waiters.is_empty() {
                self.line = None;
            }
            // A sender that stopped waiting still gets its message delivered: it was submitted.
            let _ = waiter.admitted.send(Ok(()));
            self.push(waiter.message);
            admitted = true;
        }
        admitted
    }
}

impl Outbox {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            limits,
            notify: Signal::default(),
            close: AtomicU8::new(0),
            buffers: AtomicU8::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places a message: in the queue if nothing waits before it and it fits, else in line.
    /// A line as long as the queue itself (in messages or bytes) marks a slow reader.
    pub(super) fn queue(&self, message: Bytes) -> Queued {
        let mut queue = self.lock();
        // Under the lock: `close` and `seal` refuse what waits under it too.
        if queue.sealed || self.close_requested().is_some() {
            return Queued::Refused(OpError::NoSession);
        }
        if queue.line.is_none() && queue.fits(&message, self.limits) {
            queue.push(message);
            drop(queue);
            self.notify.give();
            return Queued::Now;
        }
        let line = queue.line.get_or_insert_default();
        let line_full = line.waiters.len() >= self.limits.messages
            || (!line.waiters.is_empty() && line.bytes + message.len() > self.limits.bytes);
        if line_full {
            drop(queue);
            self.close(CloseReason::Timeout);
            return Queued::Refused(OpError::QueueFull);
        }
        let (admitted, outcome) = oneshot::channel();
        line.bytes += message.len();
        line.waiters.push_back(Waiter { message, admitted });
        Queued::Later(outcome)
    }

    /// Asks the session to close (the first reason asked wins); messages still in line are
    /// refused.
    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self
            .close
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        let refusal = match self.close_requested() {
            Some(CloseReason::Timeout) => OpError::QueueFull,
            _ => OpError::NoSession,
        };
        self.refuse_waiting(refusal);
        self.notify.give();
    }

    /// Takes nothing more (the session is writing its last), without asking it to close;
    /// messages still in line are refused.
    pub(crate) fn seal(&self) {
        self.lock().sealed = true;
        self.refuse_waiting(OpError::NoSession);
    }

    fn refuse_waiting(&self, refusal: OpError) {
        let waiting = {
            let mut queue = self.lock();
            queue.line.take()
        };
        for waiter in waiting.into_iter().flat_map(|line| line.waiters) {
            let _ = waiter.admitted.send(Err(refusal.clone()));
        }
    }

    /// The close reason asked for, if any.
    pub(crate) fn close_requested(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.close.load(Ordering::Acquire))
    }

    /// Resolves when a message or a request may be waiting.
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await;
    }

    /// Ready when a message or a request may be waiting; else the session is woken when one
    /// may be.
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.notify.poll_take(cx)
    }

    /// The instance stops: the session drains, as soon as it is woken or done with its step.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.notify.give();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Whether anything waits for the session: a message, a close request, a request to
    /// release its buffers.
    pub(crate) fn has_work(&self) -> bool {
        self.close_requested().is_some()
            || self.buffers.load(Ordering::Acquire) == RELEASE
            || !self.lock().ready.is_empty()
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
            self.notify.give();
        }
    }

    /// Whether the session was asked to release its buffers; clears the request.
    pub(crate) fn take_release(&self) -> bool {
        self.buffers
            .compare_exchange(RELEASE, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Moves every queued message into `out` and lets waiting ones into the queue; returns
    /// how many moved.
    pub(crate) fn drain_into(&self, out: &mut BytesMut) -> usize {
        let mut queue = self.lock();
        let count = queue.ready.len();
        for message in queue.ready.drain(..) {
            out.extend_from_slice(&message);
        }
        queue.bytes = 0;
        let admitted = queue.admit(self.limits);
        drop(queue);
        if admitted {
            self.notify.give();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::session::SessionEntry;

    fn entry(messages: usize, bytes: usize) -> Arc<SessionEntry> {
        let address = "127.0.0.1:1".parse().unwrap();
        Arc::new(SessionEntry::new(address, address, QueueLimits { messages, bytes }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_keeps_the_order_of_submission_then_closes_a_slow_reader() {
        let session = entry(2, 1024);
        assert_eq!(session.submit(Bytes::from_static(b"a")).await, Ok(()));
        assert_eq!(session.submit(Bytes::from_static(b"b")).await, Ok(()));
        // Two more wait in line, in the order they were submitted, whoever awaits first.
        let c = session.submit(Bytes::from_static(b"c"));
        let d = session.submit(Bytes::from_static(b"d"));
        let d = tokio::spawn(d);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = BytesMut::new();
        assert_eq!(session.outbox.drain_into(&mut out), 2);
        assert_eq!((d.await.unwrap(), c.await), (Ok(()), Ok(())));
        assert_eq!(session.outbox.close_requested(), None);
        // Nobody drains: after the patience the session is closed as a slow reader, and what
        // still waits is refused.
        let e = session.submit(Bytes::from_static(b"e"));
        let began = tokio::time::Instant::now();
        assert_eq!(e.await, Err(OpError::QueueFull));
        assert_eq!(began.elapsed(), SEND_PATIENCE);
        assert_eq!(session.outbox.close_requested(), Some(CloseReason::Timeout));
        session.outbox.drain_into(&mut out);
        assert_eq!(&out[..], b"abcd");
    }

    #[tokio::test]
    async fn bytes_are_bounded_as_well_as_messages() {
        let session = entry(100, 4);
        assert_eq!(session.submit(Bytes::from_static(b"abc")).await, Ok(()));
        let Err(second) = session.submit(Bytes::from_static(b"de")).now() else {
            panic!("over the byte bound: it waits");
        };
        let mut out = BytesMut::new();
        session.outbox.drain_into(&mut out);
        assert_eq!(second.await, Ok(()));
        // A message bigger than the bound still passes an empty queue.
        session.outbox.drain_into(&mut out);
        assert_eq!(session.submit(Bytes::from_static(b"0123456789")).await, Ok(()));
        session.outbox.drain_into(&mut out);
        assert_eq!(&out[..], b"abcde0123456789");
    }

    #[tokio::test]
    async fn a_line_longer_in_bytes_than_the_queue_marks_a_slow_reader() {
        let session = entry(100, 4);
        assert_eq!(session.submit(Bytes::from_static(b"abcd")).await, Ok(()));
        let first = session.submit(Bytes::from_static(b"efg"));
        let overflow = session.submit(Bytes::from_static(b"hij"));
        assert_eq!(overflow.await, Err(OpError::QueueFull));
        assert_eq!(session.outbox.close_requested(), Some(CloseReason::Timeout));
        assert_eq!(first.await, Err(OpError::QueueFull), "what waited is refused too");
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_later_messages_are_refused() {
        let session = entry(1, 1024);
        assert_eq!(session.submit(Bytes::from_static(b"a")).await, Ok(()));
        let waiting = session.submit(Bytes::from_static(b"b"));
        session.outbox.close(CloseReason::LocalClosing);
        session.outbox.close(CloseReason::Timeout);
        assert_eq!(session.outbox.close_requested(), Some(CloseReason::LocalClosing));
        assert_eq!(waiting.await, Err(OpError::NoSession));
        assert_eq!(
            session.submit(Bytes::from_static(b"late")).await,
            Err(OpError::NoSession)
        );
    }
}
