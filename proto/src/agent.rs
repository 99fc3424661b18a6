//! The control channel between the host and an agent process (process isolation): JSON frames
//! on a unix socket, each a `u32` big-endian length then the JSON of one message. The first
//! frame from the host, [`ToAgent::Init`], carries the instance's listening sockets as
//! SCM_RIGHTS ancillary data.
//!
//! Both sides may ask the other something; a request carries an `id` that its reply repeats.

use serde::{Deserialize, Serialize};

use crate::{ListenerInfo, ServerInfo, SessionInfo};

/// Longest control frame accepted (a call's JSON, a sessions list, bytes to send).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A message from the host to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToAgent {
    /// The first frame: what to run. Its listening sockets arrive with it, in this order.
    Init {
        /// The instance's config (the host's `ServerConfig`, as JSON).
        server: serde_json::Value,
        /// Session ids this agent hands out start here, so they stay unique in the host.
        session_ids_from: u64,
        /// Every other instance of the host.
        peers: Vec<Peer>,
    },
    /// Something the host asks of the agent.
    Request {
        /// Repeated in the reply.
        id: u64,
        /// What.
        request: AgentRequest,
    },
    /// The answer to a request of the agent.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// The other instances changed (started, stopped, added, removed).
    Peers {
        /// Every other instance of the host.
        peers: Vec<Peer>,
    },
}

/// A message from an agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromAgent {
    /// The instance runs; these are its listeners.
    Ready {
        /// The listeners it serves.
        listeners: Vec<ListenerInfo>,
    },
    /// The instance could not start; the agent exits after sending this.
    Failed {
        /// Why.
        error: String,
    },
    /// Counters, sent a few times a second.
    Stats(AgentStats),
    /// The answer to a request of the host.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// Something the agent asks of the host (on behalf of its instance's handlers).
    Request {
        /// Repeated in the reply.
        id: u64,
        /// What.
        request: HostRequest,
    },
}

/// The answer to a request: a JSON value, or why it failed.
pub type Reply = Result<serde_json::Value, Failure>;

/// Why a request over the control channel failed, typed so that each side can act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "failure", rename_all = "snake_case")]
pub enum Failure {
    /// No such instance or session.
    NoSession,
    /// The session's queue stayed full: a slow reader, being closed.
    QueueFull,
    /// The instance is not running (stopped, or its agent went away).
    NotRunning,
    /// Anything else: a handler's error, a malformed request.
    Failed {
        /// What went wrong.
        message: String,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSession => f.write_str("no such session"),
            Self::QueueFull => f.write_str("the session's send queue stayed full"),
            Self::NotRunning => f.write_str("not running"),
            Self::Failed { message } => f.write_str(message),
        }
    }
}

/// What the host asks of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Up to `limit` open sessions → `[SessionInfo]`.
    Sessions {
        /// Most sessions to list.
        limit: usize,
    },
    /// Queue bytes for one session → `null`, or an error naming why.
    Send {
        /// The session id.
        session: String,
        /// The bytes, base64.
        base64: String,
    },
    /// Queue bytes for every session → the count.
    Broadcast {
        /// The bytes, base64.
        base64: String,
    },
    /// Close one session → `true` if it existed.
    Kick {
        /// The session id.
        session: String,
    },
    /// A call to the instance's service → its answer.
    Call {
        /// The request.
        request: serde_json::Value,
    },
    /// Stop gracefully within `timeout_ms`, answer, then exit.
    Stop {
        /// The drain bound.
        timeout_ms: u64,
    },
}

/// What an agent asks of the host, for another instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostRequest {
    /// Queue bytes for a session of another instance.
    Send {
        /// The instance.
        server: String,
        /// The session id.
        session: String,
        /// The bytes, base64.
        base64: String,
    },
    /// Queue bytes for every session of another instance → the count.
    Broadcast {
        /// The instance.
        server: String,
        /// The bytes, base64.
        base64: String,
    },
    /// Call another instance → its answer.
    Call {
        /// The instance.
        server: String,
        /// The request.
        request: serde_json::Value,
    },
}

/// An instance as the agents of the host see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its config (the host's `ServerConfig`, as JSON).
    pub config: serde_json::Value,
    /// Its state, listeners and counters.
    pub info: ServerInfo,
}

/// An agent's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    /// Sessions open now.
    pub sessions: u64,
    /// Sessions accepted and served.
    pub total_sessions: u64,
    /// Connections closed at once over `max_connections`.
    pub rejected: u64,
    /// Packages decoded.
    pub total_packages: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// The reply of [`AgentRequest::Sessions`].
pub type SessionList = Vec<SessionInfo>;
