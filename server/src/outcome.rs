//! What an operation on an instance or one of its sessions comes to: [`OpError`] says why it
//! failed, and [`Pending`] is an operation already submitted whose outcome may come later.
//!
//! Sends are submitted when they are made, not when they are awaited: a caller that makes
//! several before awaiting any keeps their order, and can await each outcome later (the
//! `command` type pipelines `DISPATCH` that way).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed future, for operations that cross a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an operation on an instance or a session did not succeed. The caller always learns
/// one of these; nothing fails silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No such session (it never existed, or it has closed).
    #[error("no such session")]
    NoSession,
    /// The session's send queue stayed full: a slow reader, being closed.
    #[error("the session's send queue stayed full (slow reader); it is being closed")]
    QueueFull,
    /// The instance is not running (stopped, failed, or its agent went away).
    #[error("the server is not running")]
    NotRunning,
    /// The instance did not answer in time, or its agent ended before it did: whether the
    /// operation was carried out is unknown (do not repeat it blindly).
    #[error("the server did not answer")]
    Unanswered,
    /// The instance's handler refused the request (a call's error answer).
    #[error("{0}")]
    Refused(String),
}

/// An operation already submitted; awaiting it gives its outcome.
#[must_use = "the operation is submitted; await it to learn whether it succeeded"]
pub struct Pending<T>(State<T>);

enum State<T> {
    /// The outcome is known (taken once polled).
    Ready(Option<Result<T, OpError>>),
    /// The outcome comes later.
    Waiting(BoxFuture<'static, Result<T, OpError>>),
}

impl<T> Pending<T> {
    /// An operation whose outcome is known now.
    pub fn ready(outcome: Result<T, OpError>) -> Self {
        Self(State::Ready(Some(outcome)))
    }

    /// An operation whose outcome `future` gives.
    pub fn waiting(future: impl Future<Output = Result<T, OpError>> + Send + 'static) -> Self {
        Self(State::Waiting(Box::pin(future)))
    }

    /// The outcome, if it is known without waiting.
    pub fn now(&mut self) -> Option<Result<T, OpError>> {
        match &mut self.0 {
            State::Ready(outcome) => outcome.take(),
            State::Waiting(_) => None,
        }
    }

    /// The same operation with its success mapped.
    pub fn map<U: 'static>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Pending<U>
    where
        T: 'static,
    {
        match self.0 {
            State::Ready(outcome) => Pending::ready(outcome.expect("a pending outcome is taken once").map(f)),
            State::Waiting(future) => Pending::waiting(async move { future.await.map(f) }),
        }
    }
}

// The outcome is only ever moved out, never pinned: a `Pending` may move whatever `T` is.
impl<T> Unpin for Pending<T> {}

impl<T> Future for Pending<T> {
    type Output = Result<T, OpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Ready(outcome) => Poll::Ready(outcome.take().expect("a pending outcome is polled once it is ready")),
            State::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            State::Ready(_) => "Pending::Ready",
            State::Waiting(_) => "Pending::Waiting",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_outcome_is_known_now_and_a_waiting_one_later() {
        let mut ready = Pending::ready(Ok(3));
        assert_eq!(ready.now(), Some(Ok(3)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut waiting =
            Pending::waiting(async move { rx.await.map_err(|_| OpError::NotRunning) }).map(|n: u32| n * 2);
        assert_eq!(waiting.now(), None);
        tx.send(21).unwrap();
        assert_eq!(waiting.await, Ok(42));
    }
}
