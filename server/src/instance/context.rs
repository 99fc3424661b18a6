//! What the sessions and tasks of one run of an instance share: its name, config, sessions,
//! counters, its way to the rest of the host, and background tasks that end with the run.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InstanceStats;
use crate::config::ServerConfig;
use crate::dispatch::HostHandle;
use crate::session::{SendError, SessionId, SessionRegistry};

/// One run of an instance, as its handlers see it.
pub struct InstanceContext {
    pub(crate) name: String,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) stats: Arc<InstanceStats>,
    pub(crate) host: HostHandle,
    /// Tracks sessions and background tasks so a stop can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the run begins to stop.
    pub(crate) stopping: CancellationToken,
    /// The runtime the run's tasks live on.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl InstanceContext {
    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's config.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The other instances of the host: by name, by type, and through the dispatcher.
    pub fn host(&self) -> &HostHandle {
        &self.host
    }

    /// Queues bytes for one session of this instance.
    pub async fn send_to(&self, session: SessionId, bytes: Bytes) -> Result<(), SendError> {
        self.sessions.send(session, bytes).await
    }

    /// Queues bytes for every session of this instance; returns how many took them.
    pub async fn broadcast(&self, bytes: Bytes) -> usize {
        self.sessions.broadcast(&bytes).await
    }

    /// Sessions open now.
    pub fn session_count(&self) -> u64 {
        self.stats.sessions.load(Ordering::Relaxed)
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
