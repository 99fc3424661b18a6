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
    /// The outcome is known.
    Ready(Result<T, OpError>),
    /// The outcome comes later.
    Waiting(BoxFuture<'static, Result<T, OpError>>),
    /// Polled to its end.
    Done,
}

impl<T> Pending<T> {
    /// An operation whose outcome is known now.
    pub fn ready(outcome: Result<T, OpError>) -> Self {
        Self(State::Ready(outcome))
    }

    /// An operation whose outcome `future` gives.
    pub fn waiting(future: impl Future<Output = Result<T, OpError>> + Send + 'static) -> Self {
        Self(State::Waiting(Box::pin(future)))
    }

    /// The outcome if it is known without waiting, else the operation back.
    pub fn now(self) -> Result<Result<T, OpError>, Self> {
        match self.0 {
            State::Ready(outcome) => Ok(outcome),
            state => Err(Self(state)),
        }
    }

    /// The same operation with its success mapped.
    pub fn map<U: 'static>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Pending<U>
    where
        T: 'static,
    {
        match self.0 {
            State::Ready(outcome) => Pending::ready(outcome.map(f)),
            State::Waiting(future) => Pending::waiting(async move { future.await.map(f) }),
            State::Done => Pending(State::Done),
        }
    }
}

// The outcome is only ever moved out, never pinned: a `Pending` may move whatever `T` is.
impl<T> Unpin for Pending<T> {}

impl<T> Future for Pending<T> {
    type Output = Result<T, OpError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().0;
        let outcome = match state {
            State::Waiting(future) => std::task::ready!(future.as_mut().poll(cx)),
            State::Ready(_) => match std::mem::replace(state, State::Done) {
                State::Ready(outcome) => outcome,
                _ => unreachable!("the state was just seen ready"),
            },
            State::Done => panic!("a Pending polled after it gave its outcome"),
        };
        *state = State::Done;
        Poll::Ready(outcome)
    }
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            State::Ready(_) => "Pending::Ready",
            State::Waiting(_) => "Pending::Waiting",
            State::Done => "Pending::Done",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_outcome_is_known_now_and_a_waiting_one_later() {
        assert!(matches!(Pending::ready(Ok(3)).now(), Ok(Ok(3))));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = Pending::waiting(async move { rx.await.map_err(|_| OpError::NotRunning) }).map(|n: u32| n * 2);
        let Err(waiting) = waiting.now() else {
            panic!("the outcome is not known yet");
        };
        tx.send(21).unwrap();
        assert_eq!(waiting.await, Ok(42));
    }
}
