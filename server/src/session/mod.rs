//! Sessions as the rest of the host keeps them: ids, close reasons, the entry of an open
//! session (its identity, counters and outbox), an instance's registry of them, the idle
//! sweeper, and the buffers sessions borrow from their worker thread. The task that runs a connection lives in `runtime`; what a handler sees of its
//! session lives in `context`.

pub(crate) mod buffers;
mod entry;
mod id;
mod outbox;
mod registry;
pub(crate) mod sweeper;

use std::fmt;

pub(crate) use entry::SessionEntry;
pub use id::SessionId;
pub(crate) use outbox::QueueLimits;
pub use outbox::SEND_PATIENCE;
pub(crate) use registry::SessionRegistry;

/// Why a session closed (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer closed the connection.
    RemoteClosing = 1,
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
    /// The reason stored as [`code`](Self::code).
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::RemoteClosing,
            2 => Self::LocalClosing,
            3 => Self::ServerShutdown,
            4 => Self::Timeout,
            5 => Self::ProtocolError,
            6 => Self::Rejected,
            7 => Self::ApplicationError,
            8 => Self::SocketError,
            _ => return None,
        })
    }

    /// A non-zero code, for storing the reason in an atomic.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_survives_its_code() {
        let all = [
            CloseReason::RemoteClosing,
            CloseReason::LocalClosing,
            CloseReason::ServerShutdown,
            CloseReason::Timeout,
            CloseReason::ProtocolError,
            CloseReason::Rejected,
            CloseReason::ApplicationError,
            CloseReason::SocketError,
        ];
        for reason in all {
            assert_ne!(reason.code(), 0);
            assert_eq!(CloseReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(CloseReason::from_code(0), None);
    }
}
