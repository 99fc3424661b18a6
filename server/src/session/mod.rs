//! Sessions: one task per connection. This module holds what a handler sees of its session
//! ([`Session`]); `driver` runs the connection (read, decode, handle, write), `outbox` queues
//! messages other tasks send to it, `registry` lists an instance's open sessions, `sweeper`
//! closes the idle ones.

mod driver;
mod outbox;
mod registry;
pub(crate) mod sweeper;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytes::BytesMut;

pub(crate) use driver::{Connection, SessionSetup, serve};
pub(crate) use outbox::Outbox;
pub use outbox::SendError;
pub(crate) use registry::SessionRegistry;

use crate::instance::InstanceContext;

/// Opaque session id, unique in the host for its lifetime; shown as lower-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

impl SessionId {
    /// A fresh id.
    pub(crate) fn next() -> Self {
        Self(NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed))
    }

    /// Makes this process hand out ids from `first` on (an agent gets its own range, so ids
    /// stay unique in the host).
    pub(crate) fn start_at(first: u64) {
        NEXT_SESSION_ID.store(first.max(1), Ordering::Relaxed);
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// Why a session closed (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed the connection.
    RemoteClosing,
    /// A handler or an operator closed it.
    LocalClosing,
    /// Its instance stopped, or the host shut down.
    ServerShutdown,
    /// Idle for `idle_timeout`, or a slow reader whose outbound queue overflowed.
    Timeout,
    /// The peer broke the protocol (malformed or oversized package).
    ProtocolError,
    /// Accepted beyond `max_connections`.
    Rejected,
    /// A handler panicked.
    ApplicationError,
    /// The socket failed (reset, TLS handshake failure...).
    SocketError,
}

impl CloseReason {
    /// The snake_case name of SPEC §4.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteClosing => "remote_closing",
            Self::LocalClosing => "local_closing",
            Self::ServerShutdown => "server_shutdown",
            Self::Timeout => "timeout",
            Self::ProtocolError => "protocol_error",
            Self::Rejected => "rejected",
            Self::ApplicationError => "application_error",
            Self::SocketError => "socket_error",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host keeps of one open session: its identity, counters and outbox.
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// The session's id.
    pub id: SessionId,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The local address the peer reached.
    pub local: SocketAddr,
    /// Wall-clock accept time, for the API.
    pub started_at: SystemTime,
    /// Monotonic accept time, the base of `last_active_ms`.
    started: Instant,
    /// Milliseconds after `started` that bytes last moved.
    last_active_ms: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Messages from other tasks, and close requests.
    pub outbox: Outbox,
}

impl SessionShared {
    pub(crate) fn new(remote: SocketAddr, local: SocketAddr, send_queue: usize) -> Self {
        Self {
            id: SessionId::next(),
            remote,
            local,
            started_at: SystemTime::now(),
            started: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            outbox: Outbox::new(send_queue),
        }
    }

    /// Records activity now.
    pub(crate) fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// When bytes last moved.
    pub(crate) fn last_active(&self) -> Instant {
        self.started + std::time::Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// Wall-clock time bytes last moved.
    pub(crate) fn last_active_at(&self) -> SystemTime {
        self.started_at + std::time::Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }
}

/// A handler's view of its session: who it is, where replies go, and its instance.
///
/// Replies are collected and written together once every package of a read is handled, so
/// a burst of requests costs one write.
pub struct Session<'a> {
    pub(crate) shared: &'a Arc<SessionShared>,
    pub(crate) instance: &'a InstanceContext,
    pub(crate) out: &'a mut BytesMut,
    pub(crate) close: &'a mut Option<CloseReason>,
}

impl<'a> Session<'a> {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.remote
    }

    /// The local address the peer reached.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The instance this session belongs to.
    pub fn instance(&self) -> &'a InstanceContext {
        self.instance
    }

    /// The other instances of the host: by name, by type, and through the dispatcher.
    pub fn host(&self) -> &'a crate::dispatch::HostHandle {
        &self.instance.host
    }

    /// Queues bytes for the peer.
    pub fn reply(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Queues formatted text and `\r\n` for the peer (no allocation: it formats in place).
    pub fn reply_line(&mut self, text: impl fmt::Display) {
        use std::fmt::Write as _;
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.out, "{text}\r\n");
    }

    /// Closes the session (`local_closing`) once the replies queued so far are written.
    pub fn close(&mut self) {
        self.close.get_or_insert(CloseReason::LocalClosing);
    }

    /// An owned handle on this session, for tasks that outlive this handler call.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle(self.shared.clone())
    }
}

/// An owned handle on a session, for a task that outlives a handler call (a transfer, a timer):
/// it queues bytes for the peer through the session's outbox, in order with everything else
/// sent that way, and can close the session.
#[derive(Debug, Clone)]
pub struct SessionHandle(Arc<SessionShared>);

impl SessionHandle {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.0.id
    }

    /// Queues bytes for the peer, waiting for room like any sender (see `send_queue`).
    pub async fn send(&self, bytes: bytes::Bytes) -> Result<(), SendError> {
        self.0.outbox.push(bytes).await
    }

    /// Closes the session (`local_closing`) once what is queued has been written.
    pub fn close(&self) {
        self.0.outbox.request_close(CloseReason::LocalClosing);
    }

    /// Counts the session as active now (so the idle timeout waits), for work done on its
    /// behalf elsewhere.
    pub fn touch(&self) {
        self.0.touch(Instant::now());
    }
}
