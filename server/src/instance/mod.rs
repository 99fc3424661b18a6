//! One named server instance and its state machine (SPEC §4): start binds every listener or
//! none, stop closes the listeners then drains the sessions within a timeout. Start and stop
//! of one instance are serialised; reading its state never waits for them.

mod accept;
mod context;
mod listener;
mod local;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use supersocket_proto::agent::{AgentRequest, FromAgent, HostRequest, ToAgent};
use supersocket_proto::{Isolation, ListenerInfo, ServerInfo, ServerState, SessionInfo};

use crate::config::ServerConfig;
use crate::dispatch::Directory;
use crate::isolation::channel::{self, Link};
use crate::isolation::supervisor::AgentRun;
use crate::service::{ErasedService, ServerTypes};
use crate::session::{CloseReason, SendError, SessionId, SessionRegistry};
use crate::timefmt::rfc3339;
pub use context::InstanceContext;
pub(crate) use listener::bind_all;
pub(crate) use stats::InstanceStats;

/// Runs `operation` on its own task so that it completes even if the caller's future is
/// dropped, and waits for it.
async fn finish_detached<T: Send + 'static>(operation: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(operation).await {
        Ok(output) => output,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the runtime shut down during an instance operation"),
        },
    }
}

/// Why a call to another instance failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The instance is not running.
    #[error("server {0:?} is not running")]
    NotRunning(String),
    /// The instance's handler answered with an error (or panicked).
    #[error("server {server:?}: {message}")]
    Failed {
        /// The instance called.
        server: String,
        /// What went wrong.
        message: String,
    },
}

/// Why an instance could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// What the API shows of the instance's life.
#[derive(Debug, Clone)]
struct Status {
    state: ServerState,
    last_error: Option<String>,
    started: Option<(SystemTime, Instant)>,
    listeners: Vec<ListenerInfo>,
    restarts: u64,
    /// The agent's pid under process isolation.
    pid: Option<u32>,
}

/// The handles of a running instance.
enum Running {
    /// In this process.
    Local(local::LocalRun),
    /// In a supervised agent process.
    Agent(AgentRun),
}

/// How operations reach the current run of an instance.
#[derive(Clone)]
pub(crate) enum Live {
    /// In this process: its service and context.
    Local {
        service: Arc<dyn ErasedService>,
        context: Arc<InstanceContext>,
    },
    /// In an agent process, over its control channel (host side).
    Agent(Arc<Link<ToAgent>>),
    /// Another instance of the host, seen from an agent: through the host.
    Remote(Arc<Link<FromAgent>>),
}

/// A named server instance.
pub struct Instance {
    name: String,
    config: RwLock<Arc<ServerConfig>>,
    types: ServerTypes,
    status: Mutex<Status>,
    /// Serialises start and stop; holds the running handles.
    run: tokio::sync::Mutex<Option<Running>>,
    stats: Arc<InstanceStats>,
    sessions: Arc<SessionRegistry>,
    /// The host's instances, for dispatch and to announce state changes.
    directory: Weak<Directory>,
    /// How operations reach the current run, while running.
    live: RwLock<Option<Live>>,
    /// Listening sockets handed over by the host, in an agent.
    handed_over: Mutex<Option<Vec<std::net::TcpListener>>>,
}

impl Instance {
    pub(crate) fn new(config: ServerConfig, types: ServerTypes, directory: Weak<Directory>) -> Self {
        Self {
            name: config.name.clone(),
            config: RwLock::new(Arc::new(config)),
            types,
            status: Mutex::new(Status {
                state: ServerState::Stopped,
                last_error: None,
                started: None,
                listeners: Vec::new(),
                restarts: 0,
                pid: None,
            }),
            run: tokio::sync::Mutex::new(None),
            stats: Arc::default(),
            sessions: Arc::default(),
            directory,
            live: RwLock::new(None),
            handed_over: Mutex::new(None),
        }
    }

    /// Whether it is `running` (the dispatcher routes only to running instances).
    pub fn is_running(&self) -> bool {
        self.state() == ServerState::Running
    }

    fn topology_changed(&self) {
        if let Some(directory) = self.directory.upgrade() {
            directory.topology_changed();
        }
    }

    fn live(&self) -> Option<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends a request to its service's `call` handler and waits for the answer. The message
    /// is JSON so that the same call works whatever the instance's isolation.
    pub async fn call(&self, request: serde_json::Value) -> Result<serde_json::Value, CallError> {
        match self.live().ok_or_else(|| CallError::NotRunning(self.name.clone()))? {
            Live::Local { service, context } => {
                let runtime = context.runtime.clone();
                // On the callee's own runtime, so a busy caller cannot starve it (and vice versa).
                let failed = |message| CallError::Failed {
                    server: self.name.clone(),
                    message,
                };
                match runtime.spawn(service.call(context, request)).await {
                    Ok(answer) => answer.map_err(failed),
                    Err(_) => Err(failed("the handler panicked".into())),
                }
            }
            Live::Agent(link) => {
                let asked = link
                    .request(|id| ToAgent::Request {
                        id,
                        request: AgentRequest::Call { request },
                    })
                    .await;
                asked.map_err(|f| channel::call_error(&self.name, f))
            }
            Live::Remote(link) => {
                let server = self.name.clone();
                let asked = link.request(|id| FromAgent::Request {
                    id,
                    request: HostRequest::Call { server, request },
                });
                asked.await.map_err(|f| channel::call_error(&self.name, f))
            }
        }
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its current config.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its current state.
    pub fn state(&self) -> ServerState {
        self.status().state
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts it: binds every listener or none. Starting a running instance does nothing; a
    /// start during a stop waits for the stop. The operation runs to its end even if the
    /// caller stops waiting (an HTTP client that hangs up cannot leave a half-started instance).
    pub async fn start(self: &Arc<Self>) -> Result<(), StartError> {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            this.start_locked(&mut run).await
        })
        .await
    }

    /// Stops it: closes the listeners, lets sessions drain for at most `timeout`, then closes
    /// the rest. Stopping a stopped or failed instance does nothing. Runs to its end even if the
    /// caller stops waiting.
    pub async fn stop(self: &Arc<Self>, timeout: Duration) {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            this.stop_locked(&mut run, timeout).await;
        })
        .await
    }

    /// Stops it (if running) and starts it again, with no other operation in between.
    pub async fn restart(self: &Arc<Self>, timeout: Duration) -> Result<(), StartError> {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            this.stop_locked(&mut run, timeout).await;
            this.start_locked(&mut run).await
        })
        .await
    }

    /// Takes a changed config (reload): stops the instance, swaps the config, and starts it
    /// again if it was running or is autostart.
    pub(crate) async fn reconfigure(self: &Arc<Self>, config: ServerConfig, timeout: Duration) {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            let was_running = run.is_some();
            this.stop_locked(&mut run, timeout).await;
            let autostart = config.autostart;
            *this.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
            if was_running || autostart {
                // A failure is recorded in the status and logged.
                let _ = this.start_locked(&mut run).await;
            }
        })
        .await
    }

    async fn start_locked(self: &Arc<Self>, run: &mut Option<Running>) -> Result<(), StartError> {
        if run.is_some() {
            return Ok(());
        }
        {
            // An explicit start begins afresh; a supervised restart keeps what killed the agent.
            let mut status = self.status();
            status.state = ServerState::Starting;
            status.last_error = None;
        }
        let started = if self.config().isolation == Isolation::Process {
            // The supervisor reports the agent's states itself, restarts included.
            AgentRun::start(self.clone()).await.map(Running::Agent)
        } else {
            local::launch(self).map(|(local, live, listeners)| {
                if let Live::Local { service, context } = &live {
                    service.started(context);
                }
                self.mark_running(None, listeners, live);
                Running::Local(local)
            })
        };
        match started {
            Ok(running) => {
                *run = Some(running);
                Ok(())
            }
            Err(message) => {
                let mut status = self.status();
                status.state = ServerState::Failed;
                status.last_error = Some(message.clone());
                tracing::error!(server = %self.name, "start failed: {message}");
                Err(StartError(message))
            }
        }
    }

    /// Records a run that now serves: its process, its listeners, how to reach it.
    pub(crate) fn mark_running(&self, pid: Option<u32>, listeners: Vec<ListenerInfo>, live: Live) {
        {
            let mut status = self.status();
            status.state = ServerState::Running;
            status.started = Some((SystemTime::now(), Instant::now()));
            status.pid = pid;
            let bound: Vec<String> = listeners.iter().map(|l| format!("{}:{}", l.ip, l.port)).collect();
            tracing::info!(server = %self.name, listeners = ?bound, pid, "started");
            status.listeners = listeners;
        }
        self.set_live(Some(live));
    }

    /// Records a run that ended on its own (an agent that died): `state` and why.
    pub(crate) fn mark_down(&self, state: ServerState, error: Option<String>, restart: bool) {
        self.set_live(None);
        let mut status = self.status();
        status.state = state;
        status.started = None;
        status.pid = None;
        status.listeners.clear();
        if error.is_some() {
            status.last_error = error;
        }
        status.restarts += u64::from(restart);
    }

    /// Sets how calls reach the current run, and tells the host's instances.
    fn set_live(&self, live: Option<Live>) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
        self.topology_changed();
    }

    /// The instance's counters, for an agent's reports.
    pub(crate) fn stats(&self) -> &InstanceStats {
        &self.stats
    }

    /// Listening sockets handed over by the host (in an agent): used instead of binding.
    pub(crate) fn hand_over(&self, listeners: Vec<std::net::TcpListener>) {
        *self.handed_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(listeners);
    }

    fn take_handed_over(&self) -> Option<Vec<std::net::TcpListener>> {
        self.handed_over.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The host's instances this one belongs to.
    pub(crate) fn directory(&self) -> Option<Arc<Directory>> {
        self.directory.upgrade()
    }

    /// A weak reference to the directory, for instances made beside this one.
    pub(crate) fn directory_handle(&self) -> Weak<Directory> {
        self.directory.clone()
    }

    /// Takes the state the host reports for an instance of it, in an agent: operations on the
    /// instance go through `live` (the host) while it runs.
    pub(crate) fn mirror(&self, info: &ServerInfo, live: Live) {
        {
            let mut status = self.status();
            status.state = info.state;
            status.listeners.clone_from(&info.listeners);
            status.pid = Some(info.pid);
            status.restarts = info.restarts;
            status.last_error.clone_from(&info.last_error);
        }
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = (info.state == ServerState::Running).then_some(live);
    }

    async fn stop_locked(&self, run: &mut Option<Running>, timeout: Duration) {
        let Some(running) = run.take() else { return };
        self.status().state = ServerState::Stopping;
        self.set_live(None);
        let began = Instant::now();
        match running {
            Running::Local(local) => local.stop(timeout).await,
            Running::Agent(agent) => agent.stop(timeout).await,
        }
        let mut status = self.status();
        status.state = ServerState::Stopped;
        status.started = None;
        status.listeners.clear();
        status.pid = None;
        tracing::info!(server = %self.name, elapsed = ?began.elapsed(), "stopped");
    }

    /// The `Server` JSON of the admin API.
    pub fn info(&self) -> ServerInfo {
        let config = self.config();
        let status = self.status().clone();
        let stats = &self.stats;
        ServerInfo {
            name: self.name.clone(),
            server_type: config.server_type.clone(),
            state: status.state,
            isolation: config.isolation,
            autostart: config.autostart,
            pid: status.pid.unwrap_or_else(std::process::id),
            listeners: status.listeners,
            sessions: stats.sessions.load(Ordering::Relaxed),
            max_connections: config.max_connections as u64,
            total_sessions: stats.total_sessions.load(Ordering::Relaxed),
            total_packages: stats.total_packages.load(Ordering::Relaxed),
            bytes_in: stats.bytes_in.load(Ordering::Relaxed),
            bytes_out: stats.bytes_out.load(Ordering::Relaxed),
            started_at: status.started.map(|(at, _)| rfc3339(at)),
            uptime_secs: status.started.map_or(0, |(_, since)| since.elapsed().as_secs()),
            restarts: status.restarts,
            last_error: status.last_error,
        }
    }

    /// Connections closed at once over `max_connections` since the host started.
    pub fn rejected(&self) -> u64 {
        self.stats.rejected.load(Ordering::Relaxed)
    }

    /// Up to `limit` open sessions, oldest first.
    pub async fn sessions(&self, limit: usize) -> Vec<SessionInfo> {
        if let Some(Live::Agent(link)) = self.live() {
            let asked = link
                .request(|id| ToAgent::Request {
                    id,
                    request: AgentRequest::Sessions { limit },
                })
                .await;
            return asked
                .ok()
                .and_then(|list| serde_json::from_value(list).ok())
                .unwrap_or_default();
        }
        self.sessions
            .list(limit)
            .iter()
            .map(|s| SessionInfo {
                id: s.id.to_string(),
                remote: s.remote.to_string(),
                local: s.local.to_string(),
                started_at: rfc3339(s.started_at),
                last_active_at: rfc3339(s.last_active_at()),
                bytes_in: s.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.bytes_out.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Queues bytes for one of its sessions.
    pub async fn send_to(&self, session: SessionId, bytes: Bytes) -> Result<(), SendError> {
        // Encoded only for another process: the in-process path is the hot one.
        let reply = match self.live() {
            Some(Live::Agent(link)) => {
                let request = AgentRequest::Send {
                    session: session.to_string(),
                    base64: channel::encode(&bytes),
                };
                link.request(|id| ToAgent::Request { id, request }).await
            }
            Some(Live::Remote(link)) => {
                let (server, session, base64) = (self.name.clone(), session.to_string(), channel::encode(&bytes));
                let request = HostRequest::Send {
                    server,
                    session,
                    base64,
                };
                link.request(|id| FromAgent::Request { id, request }).await
            }
            _ => return self.sessions.send(session, bytes).await,
        };
        reply.map(drop).map_err(channel::send_error)
    }

    /// Queues bytes for every one of its sessions; returns how many took them.
    pub async fn broadcast(&self, bytes: Bytes) -> usize {
        let reply = match self.live() {
            Some(Live::Agent(link)) => {
                let request = AgentRequest::Broadcast {
                    base64: channel::encode(&bytes),
                };
                link.request(|id| ToAgent::Request { id, request }).await
            }
            Some(Live::Remote(link)) => {
                let request = HostRequest::Broadcast {
                    server: self.name.clone(),
                    base64: channel::encode(&bytes),
                };
                link.request(|id| FromAgent::Request { id, request }).await
            }
            _ => return self.sessions.broadcast(&bytes).await,
        };
        reply.ok().and_then(|count| count.as_u64()).unwrap_or(0) as usize
    }

    /// Closes one of its sessions (`local_closing`); false if there is no such session.
    pub async fn kick(&self, session: SessionId) -> bool {
        if let Some(Live::Agent(link)) = self.live() {
            let session = session.to_string();
            let asked = link
                .request(|id| ToAgent::Request {
                    id,
                    request: AgentRequest::Kick { session },
                })
                .await;
            return asked.ok().and_then(|closed| closed.as_bool()).unwrap_or(false);
        }
        self.sessions.close(session, CloseReason::LocalClosing)
    }
}
