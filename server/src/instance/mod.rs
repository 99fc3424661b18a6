//! One named server instance and its state machine (SPEC §4): start binds every listener or
//! none, stop closes the listeners then drains the sessions within a timeout. Start and stop
//! of one instance are serialised; reading its state never waits for them.

mod accept;
mod context;
mod listener;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use supersocket_proto::{Isolation, ListenerInfo, ServerInfo, ServerState, SessionInfo};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::dispatch::{Directory, HostHandle};
use crate::service::{ErasedService, ServerTypes};
use crate::session::{CloseReason, SendError, SessionId, SessionRegistry};
use crate::timefmt::rfc3339;
use accept::AcceptLoop;
pub use context::InstanceContext;
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
}

/// The handles of a running instance.
struct Running {
    listen: CancellationToken,
    drain: CancellationToken,
    hard: CancellationToken,
    accept_loops: Vec<JoinHandle<()>>,
    sessions: TaskTracker,
    /// The runtime of its own under isolation `runtime`.
    runtime: Option<tokio::runtime::Runtime>,
}

/// What calls into a running instance need.
#[derive(Clone)]
struct Live {
    service: Arc<dyn ErasedService>,
    context: Arc<InstanceContext>,
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
    /// The service and context of the current run, while running.
    live: RwLock<Option<Live>>,
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
            }),
            run: tokio::sync::Mutex::new(None),
            stats: Arc::default(),
            sessions: Arc::default(),
            directory,
            live: RwLock::new(None),
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
        let live = self.live().ok_or_else(|| CallError::NotRunning(self.name.clone()))?;
        let failed = |message: String| CallError::Failed {
            server: self.name.clone(),
            message,
        };
        let runtime = live.context.runtime.clone();
        let answer = live.service.call(live.context, request);
        // On the callee's own runtime, so a busy caller cannot starve it (and vice versa).
        match runtime.spawn(answer).await {
            Ok(answer) => answer.map_err(failed),
            Err(_) => Err(failed("the handler panicked".into())),
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
            this.start_locked(&mut run)
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
            this.start_locked(&mut run)
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
                let _ = this.start_locked(&mut run);
            }
        })
        .await
    }

    fn start_locked(&self, run: &mut Option<Running>) -> Result<(), StartError> {
        if run.is_some() {
            return Ok(());
        }
        self.status().state = ServerState::Starting;
        match self.launch() {
            Ok((running, live, listeners)) => {
                *run = Some(running);
                live.service.started(&live.context);
                *self.live.write().unwrap_or_else(|e| e.into_inner()) = Some(live);
                {
                    let mut status = self.status();
                    status.state = ServerState::Running;
                    status.last_error = None;
                    status.started = Some((SystemTime::now(), Instant::now()));
                    let bound: Vec<String> = listeners.iter().map(|l| format!("{}:{}", l.ip, l.port)).collect();
                    tracing::info!(server = %self.name, listeners = ?bound, "started");
                    status.listeners = listeners;
                }
                self.topology_changed();
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

    fn launch(&self) -> Result<(Running, Live, Vec<ListenerInfo>), String> {
        let config = self.config();
        if config.isolation == Isolation::Process {
            return Err("process isolation is not supported by this host yet".into());
        }
        let service = self.types.make(&config)?;
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let listeners = listener::bind_all(&config)?;
        let runtime = match config.isolation {
            Isolation::Runtime => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.threads)
                    .thread_name(format!("ss-{}", self.name))
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot create the runtime of {}: {e}", self.name))?,
            ),
            _ => None,
        };
        let handle = runtime
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
        let (listen, drain, hard) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let sessions = TaskTracker::new();
        let instance = Arc::new(InstanceContext {
            name: self.name.clone(),
            config: config.clone(),
            sessions: self.sessions.clone(),
            stats: self.stats.clone(),
            host: HostHandle(self.directory.clone()),
            tasks: sessions.clone(),
            stopping: drain.clone(),
            runtime: handle.clone(),
        });
        let mut infos = Vec::new();
        let mut accept_loops = Vec::new();
        for std_listener in listeners {
            let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
            infos.push(ListenerInfo {
                ip: addr.ip().to_string(),
                port: addr.port(),
                tls: tls.is_some(),
            });
            let accept = AcceptLoop {
                // Registered with the reactor of the runtime it runs on.
                listener: {
                    let _enter = handle.enter();
                    tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?
                },
                tls: tls.clone(),
                service: service.clone(),
                instance: instance.clone(),
                listen: listen.clone(),
                drain: drain.clone(),
                hard: hard.clone(),
                sessions: sessions.clone(),
            };
            accept_loops.push(handle.spawn(accept.run()));
        }
        let running = Running {
            listen,
            drain,
            hard,
            accept_loops,
            sessions,
            runtime,
        };
        Ok((
            running,
            Live {
                service,
                context: instance,
            },
            infos,
        ))
    }

    async fn stop_locked(&self, run: &mut Option<Running>, timeout: Duration) {
        let Some(running) = run.take() else { return };
        self.status().state = ServerState::Stopping;
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.topology_changed();
        let began = Instant::now();
        running.listen.cancel();
        for accept_loop in running.accept_loops {
            let _ = accept_loop.await;
        }
        running.drain.cancel();
        running.sessions.close();
        if tokio::time::timeout(timeout, running.sessions.wait()).await.is_err() {
            running.hard.cancel();
            running.sessions.wait().await;
        }
        if let Some(runtime) = running.runtime {
            runtime.shutdown_background();
        }
        let mut status = self.status();
        status.state = ServerState::Stopped;
        status.started = None;
        status.listeners.clear();
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
            pid: std::process::id(),
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
    pub fn sessions(&self, limit: usize) -> Vec<SessionInfo> {
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
        self.sessions.send(session, bytes).await
    }

    /// Queues bytes for every one of its sessions; returns how many took them.
    pub async fn broadcast(&self, bytes: Bytes) -> usize {
        self.sessions.broadcast(&bytes).await
    }

    /// Closes one of its sessions (`local_closing`); false if there is no such session.
    pub fn kick(&self, session: SessionId) -> bool {
        self.sessions.close(session, CloseReason::LocalClosing)
    }
}
