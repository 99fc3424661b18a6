//! The channel between the host and an agent process (process isolation): a unix stream socket
//! carrying frames. A frame is a `u32` big-endian length of the rest, a `u32` big-endian length
//! of its header, the header (the JSON of one [`Message`]), then its payload: the raw bytes of a
//! send or a broadcast, which never pass through JSON.
//!
//! The first frame, from the host, is an [`Init`] and carries the instance's listening sockets
//! as SCM_RIGHTS ancillary data, then one end of a socket pair for each agent already running:
//! agents reach each other over those directly, not through the host. After it either side may
//! ask the other something ([`Op`], with an `id` that the [`Message::Reply`] repeats) or tell it
//! something ([`Event`]).

use std::ops::Add;

use serde::{Deserialize, Serialize};

use crate::{ListenerInfo, ServerInfo};

/// Longest frame accepted (a call's JSON, a sessions list, bytes to send).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The first frame from the host: what the agent runs. Its listening sockets arrive with it,
/// in the order of the config's listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Init {
    /// The instance's config (the host's `ServerConfig`, as JSON).
    pub server: serde_json::Value,
    /// Session ids this agent hands out start here, so they stay unique in the host.
    pub session_ids_from: u64,
    /// The key that makes the host's session ids unguessable.
    pub session_key: [u64; 2],
    /// The host's instances as they are now.
    pub view: View,
    /// The instances whose agents' sockets follow the listening sockets, in this order.
    pub links: Vec<String>,
}

/// One frame's header. (Externally tagged, as every enum here: the fastest form to read.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Something asked of the other side.
    Request {
        /// Repeated in the reply.
        id: u64,
        /// The operation.
        op: Op,
    },
    /// The outcome of a request of the other side.
    Reply {
        /// The request's id.
        id: u64,
        /// What it came to.
        outcome: Outcome,
    },
    /// Something told, not asked.
    Event(Event),
}

/// An operation on an instance that runs on the side asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Queue the payload for one session → `null`.
    Send {
        /// The instance.
        server: String,
        /// The session id.
        session: u64,
    },
    /// Queue the payload for each of these sessions → how many took it.
    Multicast {
        /// The instance.
        server: String,
        /// The session ids.
        sessions: Vec<u64>,
    },
    /// Queue the payload for every session → how many took it.
    Broadcast {
        /// The instance.
        server: String,
    },
    /// Ask the instance's service → its answer.
    Call {
        /// The instance.
        server: String,
        /// The request.
        request: serde_json::Value,
    },
    /// Up to `limit` open sessions → `[SessionInfo]`.
    Sessions {
        /// The instance.
        server: String,
        /// Most sessions to list.
        limit: usize,
    },
    /// Close one session → `null`.
    Kick {
        /// The instance.
        server: String,
        /// The session id.
        session: u64,
    },
    /// (Host to agent.) Stop gracefully, draining for at most `timeout_ms` → `null`; the host
    /// ends the agent once answered.
    Stop {
        /// The drain bound.
        timeout_ms: u64,
    },
    /// (Host to agent.) The host's instances changed → `null` once the agent routes by the new
    /// view. (The agent's own instance's config in it is ignored: it comes by `Update`.)
    Sync(View),
    /// (Host to agent.) Take this config of the agent's own instance, whose every change is
    /// live; the listening sockets for the listeners it adds came just before, one with each
    /// [`Event::Listener`] since the last `Update`, in the order of those listeners → `null`
    /// once taken, refused (and nothing changed) if it cannot be.
    Update {
        /// The instance's new config (the host's `ServerConfig`, as JSON).
        config: serde_json::Value,
    },
}

/// What a request came to: a JSON answer, or why it failed.
pub type Outcome = Result<serde_json::Value, Failure>;

/// Why a request failed, typed so that each side can act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No such session.
    NoSession,
    /// The session's queue stayed full: a slow reader, being closed.
    QueueFull,
    /// The instance is not running (stopped, or its agent went away).
    NotRunning,
    /// The instance did not answer in time.
    Unanswered,
    /// The instance's handler refused the request.
    Refused {
        /// Its error answer.
        message: String,
    },
}

/// Something one side tells the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// (Agent to host, first.) The instance runs; these are its listeners.
    Ready {
        /// The listeners it serves.
        listeners: Vec<ListenerInfo>,
    },
    /// (Agent to host, first.) The instance could not start; the agent exits after this.
    Failed {
        /// The cause.
        error: String,
    },
    /// (Agent to host, every 200 ms.) Its counters; also the agent's sign of life.
    Stats(Counters),
    /// (Host to agent.) A socket to the agent of `server` rides with this frame; operations on
    /// that instance go over it from now on.
    Link {
        /// The instance whose agent is at the other end.
        server: String,
    },
    /// (Host to agent.) A listening socket the host bound for a live change of the agent's
    /// listeners rides with this frame; the next [`Op::Update`] takes it.
    Listener {
        /// The instance (the agent's own).
        server: String,
    },
}

/// The host's instances as an agent sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Grows with every change; an agent keeps the newest it was sent.
    pub version: u64,
    /// Every instance of the host, the agent's own included, in config order (the order the
    /// dispatcher indexes).
    pub instances: Vec<Peer>,
}

/// One instance of the host, as agents see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its state, listeners and counters.
    pub info: ServerInfo,
    /// Its config (the host's `ServerConfig`, as JSON) when the agent has not seen this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// An instance's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
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

impl Add for Counters {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            sessions: self.sessions + other.sessions,
            total_sessions: self.total_sessions + other.total_sessions,
            rejected: self.rejected + other.rejected,
            total_packages: self.total_packages + other.total_packages,
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
        }
    }
}
