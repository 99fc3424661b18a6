//! What server types see: the run of an instance ([`InstanceContext`]: its name, config,
//! sessions, the other instances, background tasks), one session during a handler call
//! ([`Session`]) and an owned handle on a session for tasks that outlive the call
//! ([`SessionHandle`]).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::dispatch::HostHandle;
use crate::instance::InstanceStats;
use crate::outcome::{BoxFuture, Pending};
use crate::session::buffers::Buffer;
use crate::session::{CloseReason, SessionEntry, SessionId, SessionRegistry};

/// One run of an instance, as its handlers see it.
pub struct InstanceContext {
    pub(crate) name: String,
    /// Changes while the run lasts (a live change of limits). Read once per accept, once per
    /// session and once per sweep, never per message: an open session keeps the
    /// `max_package_length` and send queue bounds it opened with.
    pub(crate) config: std::sync::RwLock<Arc<ServerConfig>>,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) stats: Arc<InstanceStats>,
    pub(crate) host: HostHandle,
    /// Tracks sessions and background tasks so a stop can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the run begins to stop (the sessions then drain).
    pub(crate) stopping: CancellationToken,
    /// The runtime the run's tasks live on.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl InstanceContext {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its config now (limits may change while it runs).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a changed config while the run lasts.
    pub(crate) fn set_config(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// The other instances of the host: by name, by type, and through the dispatcher.
    pub fn host(&self) -> &HostHandle {
        &self.host
    }

    /// Queues bytes for one session of this instance (see [`Instance::send_to`]).
    ///
    /// [`Instance::send_to`]: crate::Instance::send_to
    pub fn send_to(&self, session: SessionId, bytes: Bytes) -> Pending<()> {
        self.sessions.send(session, bytes)
    }

    /// Queues bytes for every session of this instance; the outcome is how many took them.
    pub fn broadcast(&self, bytes: Bytes) -> Pending<usize> {
        self.sessions.broadcast(&bytes)
    }

    /// Sessions open now.
    pub fn session_count(&self) -> u64 {
        self.stats.sessions.load(Ordering::Relaxed)
    }

    /// Whether the run has begun to stop.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Counts bytes moved on the instance's behalf outside its sessions (an FTP data
    /// connection), so they show in its `bytes_in` and `bytes_out`.
    pub fn traffic(&self) -> Traffic {
        Traffic(self.stats.clone())
    }

    /// Runs a background task on the instance's runtime until it ends or the instance stops.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stopping = self.stopping.clone();
        let task = async move {
            tokio::select! {
                () = stopping.cancelled() => {}
                () = task => {}
            }
        };
        self.tasks.spawn_on(task, &self.runtime);
    }
}

/// Counts bytes into an instance's totals (see [`InstanceContext::traffic`]).
#[derive(Clone)]
pub struct Traffic(Arc<InstanceStats>);

impl Traffic {
    /// `n` bytes received.
    pub fn count_in(&self, n: u64) {
        self.0.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes sent.
    pub fn count_out(&self, n: u64) {
        self.0.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

/// Most replies one session may have waiting for an outcome: past it, the session reads no
/// more until the first of them is settled.
pub(crate) const MAX_REPLIES_LATER: usize = 128;

/// A session's replies not yet written: those of the current read, and those that wait for an
/// operation's outcome. Replies are written in the order they were made.
#[derive(Default)]
pub(crate) struct Replies {
    /// Replies ready to write with this read's batch.
    pub now: Buffer,
    /// Replies behind one that waits, in order (boxed: most sessions never have any, and
    /// every idle session would carry the queue's size).
    #[allow(clippy::box_collection)]
    later: Option<Box<VecDeque<Later>>>,
}

enum Later {
    Waiting(BoxFuture<'static, Bytes>),
    Ready(BytesMut),
}

impl Replies {
    /// Where the next reply goes: with this batch, unless a reply before it still waits.
    fn tail(&mut self) -> &mut BytesMut {
        let Some(later) = self.later.as_mut().filter(|later| !later.is_empty()) else {
            return self.now.get();
        };
        if !matches!(later.back(), Some(Later::Ready(_))) {
            later.push_back(Later::Ready(BytesMut::new()));
        }
        match later.back_mut() {
            Some(Later::Ready(bytes)) => bytes,
            _ => unreachable!("a ready entry was just made the last"),
        }
    }

    fn later(&self) -> usize {
        self.later.as_ref().map_or(0, |later| later.len())
    }

    /// Whether replies wait for an outcome.
    pub(crate) fn waiting(&self) -> bool {
        self.later() > 0
    }

    /// Whether the session must stop reading until a waiting reply is settled.
    pub(crate) fn full(&self) -> bool {
        self.later() >= MAX_REPLIES_LATER
    }

    /// Moves the replies at the front that are settled into `now`; ready when any moved.
    pub(crate) fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(later) = self.later.as_mut() else {
            return Poll::Pending;
        };
        let mut moved = false;
        while let Some(front) = later.front_mut() {
            match front {
                Later::Ready(bytes) => self.now.get().extend_from_slice(bytes),
                Later::Waiting(future) => match future.as_mut().poll(cx) {
                    Poll::Ready(bytes) => self.now.get().extend_from_slice(&bytes),
                    Poll::Pending => break,
                },
            }
            later.pop_front();
            moved = true;
        }
        if later.is_empty() {
            self.later = None;
        }
        if moved { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// A server type's own state of one session (see [`Session::state`]).
pub(crate) type SessionState = Option<Box<dyn Any + Send>>;

/// A handler's view of its session: who it is, where replies go, and its instance.
///
/// Replies are collected and written together once every package of a read is handled, so
/// a burst of requests costs one write.
pub struct Session<'a> {
    pub(crate) entry: &'a Arc<SessionEntry>,
    pub(crate) instance: &'a InstanceContext,
    pub(crate) replies: &'a mut Replies,
    pub(crate) close: &'a mut Option<CloseReason>,
    pub(crate) state: &'a mut SessionState,
}

impl<'a> Session<'a> {
    pub fn id(&self) -> SessionId {
        self.entry.id
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.entry.remote
    }

    /// The local address the peer reached.
    pub fn local_addr(&self) -> SocketAddr {
        self.entry.local
    }

    /// The instance this session belongs to.
    pub fn instance(&self) -> &'a InstanceContext {
        self.instance
    }

    /// The other instances of the host: by name, by type, and through the dispatcher.
    pub fn host(&self) -> &'a HostHandle {
        &self.instance.host
    }

    /// Queues bytes for the peer.
    pub fn reply(&mut self, bytes: &[u8]) {
        self.replies.tail().extend_from_slice(bytes);
    }

    /// Queues formatted text and `\r\n` for the peer (no allocation: it formats in place).
    pub fn reply_line(&mut self, text: impl fmt::Display) {
        use std::fmt::Write as _;
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.replies.tail(), "{text}\r\n");
    }

    /// Queues the reply that `outcome` will give, in its place among the replies: later
    /// replies are written after it. The handler returns at once and the session goes on
    /// reading, so a client can pipeline requests whose answers depend on other instances
    /// (`DISPATCH` does). A session with many replies waiting reads no more until they settle.
    pub fn reply_later(&mut self, outcome: impl Future<Output = Bytes> + Send + 'static) {
        let later = self.replies.later.get_or_insert_default();
        later.push_back(Later::Waiting(Box::pin(outcome)));
    }

    /// Closes the session (`local_closing`) once the replies queued so far are written.
    pub fn close(&mut self) {
        self.close.get_or_insert(CloseReason::LocalClosing);
    }

    /// The server type's own state of this session: a `T` made with `Default` at first use and
    /// kept with the session until it closes (the `closed` handler still sees it), so a type
    /// keeps per-session state without a map of its own. A session keeps one such value; asking
    /// for another type starts that one afresh.
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.state.as_ref().is_some_and(|state| state.is::<T>()) {
            *self.state = Some(Box::new(T::default()));
        }
        match self.state.as_mut().and_then(|state| state.downcast_mut::<T>()) {
            Some(state) => state,
            None => unreachable!("a state of this type was just put in place"),
        }
    }

    /// An owned handle on this session, for tasks that outlive this handler call.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle(self.entry.clone())
    }
}

/// An owned handle on a session, for a task that outlives a handler call (a transfer, a timer):
/// it queues bytes for the peer through the session's outbox, in order with everything else
/// sent that way, and can close the session.
#[derive(Debug, Clone)]
pub struct SessionHandle(Arc<SessionEntry>);

impl SessionHandle {
    pub fn id(&self) -> SessionId {
        self.0.id
    }

    /// Queues bytes for the peer (see `send_queue`).
    pub fn send(&self, bytes: Bytes) -> Pending<()> {
        self.0.submit(bytes)
    }

    /// Closes the session (`local_closing`) once what is queued has been written.
    pub fn close(&self) {
        self.0.outbox.close(CloseReason::LocalClosing);
    }

    /// Counts the session as active now (so the idle timeout waits), for work done on its
    /// behalf elsewhere.
    pub fn touch(&self) {
        self.0.touch();
    }
}
