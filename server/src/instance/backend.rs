//! Where an instance runs, as the rest of the host sees it. [`Backend`] carries out operations
//! on a run; [`Run`] is a run that can be stopped; [`Launch`] starts runs. Every isolation level
//! implements all three in full (in this process, on a runtime of its own, in an agent, or —
//! seen from inside an agent — in the host), so an operation one of them lacks is a compile
//! error, not a wrong answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use supersocket_proto::agent::Counters;
use supersocket_proto::{Isolation, SessionInfo};
use tokio_util::sync::CancellationToken;

use super::Instance;
use crate::config::ServerConfig;
use crate::outcome::{BoxFuture, OpError, Pending};
use crate::session::SessionId;

/// Bound on a send, multicast or broadcast to another process: room in the target's queue
/// comes within `SEND_PATIENCE`, and the rest is the trip.
pub(crate) const DELIVERY_DEADLINE: Duration = Duration::from_secs(3);
/// Bound on a call, a session list or a kick.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The operations on a running instance. Every one ends within its deadline.
pub(crate) trait Backend: Send + Sync {
    /// Submits bytes for one of its sessions (see [`Instance::send_to`]).
    fn send_to(&self, session: SessionId, bytes: Bytes) -> Pending<()>;
    /// Submits bytes for each of `sessions`; the outcome is how many took them.
    fn multicast(&self, sessions: Vec<SessionId>, bytes: Bytes) -> Pending<usize>;
    /// Submits bytes for every one of its sessions; the outcome is how many took them.
    fn broadcast(&self, bytes: Bytes) -> Pending<usize>;
    /// Asks its service's `call` handler. The call starts now: calls made one after another
    /// reach the handler in that order, however late their outcomes are awaited.
    fn call(&self, request: Value) -> Pending<Value>;
    /// Up to `limit` open sessions, oldest first.
    fn sessions(&self, limit: usize) -> BoxFuture<'static, Result<Vec<SessionInfo>, OpError>>;
    /// Closes one session (`local_closing`).
    fn kick(&self, session: SessionId) -> BoxFuture<'static, Result<(), OpError>>;
    /// Its counters, this run.
    fn stats(&self) -> Counters;
    /// Why the run does not answer, while it does not (readiness reports it).
    fn trouble(&self) -> Option<String> {
        None
    }
}

/// A run of an instance, until it is stopped.
pub(crate) trait Run: Send {
    /// Closes the listeners, lets sessions drain for at most `drain` (cut short when `hurry`
    /// fires), then closes the rest.
    fn stop(self: Box<Self>, drain: Duration, hurry: CancellationToken) -> BoxFuture<'static, ()>;
    /// Takes a config whose every change is live ([`crate::config::changes`]) without closing
    /// a session, all of it or (with the error) none of it; answers the addresses its listeners
    /// hold now.
    fn update(&mut self, config: Arc<ServerConfig>) -> BoxFuture<'_, Result<Vec<SocketAddr>, StartError>>;

    /// Whether the run ended on its own (a supervisor that gave up).
    fn ended(&self) -> bool {
        false
    }

    /// An explicit start of a run that waits to restart (a back-off): restart now.
    fn start_now(&self) {}
}

/// Starts runs of an instance at one isolation level.
pub(crate) trait Launch: Send + Sync {
    /// Starts a run: on success it serves, and has told `instance` so
    /// ([`Instance::mark_running`]).
    fn launch<'a>(&'a self, instance: &'a Arc<Instance>) -> BoxFuture<'a, Result<Box<dyn Run>, StartError>>;
}

/// The launcher of each isolation level, chosen when the host is built. An instance with none
/// for its level is run elsewhere (an agent's view of the host's other instances).
#[derive(Clone, Default)]
pub(crate) struct Launchers {
    pub none: Option<Arc<dyn Launch>>,
    pub runtime: Option<Arc<dyn Launch>>,
    pub process: Option<Arc<dyn Launch>>,
}

impl Launchers {
    pub(crate) fn get(&self, isolation: Isolation) -> Option<&Arc<dyn Launch>> {
        match isolation {
            Isolation::None => self.none.as_ref(),
            Isolation::Runtime => self.runtime.as_ref(),
            Isolation::Process => self.process.as_ref(),
        }
    }
}

/// Why an instance could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);
