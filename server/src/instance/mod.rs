//! One named server instance and its state machine (SPEC §4): start launches a run (binding
//! every listener or none), stop ends it (listeners first, then a bounded drain). Start and
//! stop of one instance are serialised; reading its state never waits for them. Where a run
//! happens is not known here: a [`Launch`] of the instance's isolation level starts it, and a
//! [`Backend`] carries out operations on it.

mod backend;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use supersocket_proto::agent::Counters;
use supersocket_proto::{Isolation, ListenerInfo, ServerInfo, ServerState, SessionInfo, StateEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use backend::StartError;
pub(crate) use backend::{Backend, DELIVERY_DEADLINE, Launch, Launchers, REQUEST_DEADLINE, Run};
pub(crate) use stats::InstanceStats;

use crate::config::ServerConfig;
use crate::outcome::{OpError, Pending};
use crate::session::SessionId;
use crate::timefmt::rfc3339;

/// Runs `operation` on its own task so that it completes even if the caller's future is
/// dropped, and waits for it.
pub(crate) async fn finish_detached<T: Send + 'static>(operation: impl Future<Output = T> + Send + 'static) -> T {
    match tokio::spawn(operation).await {
        Ok(output) => output,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the runtime shut down during an instance operation"),
        },
    }
}

/// How a listener bound at `addr` is reported.
pub(crate) fn listener_info(addr: SocketAddr, tls: bool) -> ListenerInfo {
    ListenerInfo {
        ip: addr.ip().to_string(),
        port: addr.port(),
        tls,
    }
}

/// How long a start waits for a run that is restarting to serve again.
const RESTART_WAIT: Duration = Duration::from_secs(15);

/// What an instance needs of the host it lives in.
#[derive(Clone)]
pub(crate) struct InstanceEnv {
    /// How runs of each isolation level start.
    pub launchers: Launchers,
    /// Bumped whenever an instance enters or leaves `running`: the dispatcher's routes and the
    /// agents' views follow it.
    pub topology: Arc<watch::Sender<u64>>,
    pub life: HostLife,
    /// Told of every change of an instance's state, as it happens.
    pub states: StateHook,
}

/// What the host runs on every change of an instance's state (or error); nothing by default.
#[derive(Clone, Default)]
pub(crate) struct StateHook(Option<Arc<dyn Fn(StateEvent) + Send + Sync>>);

impl StateHook {
    pub(crate) fn new(hook: impl Fn(StateEvent) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(hook)))
    }
}

/// The host's life as instances see it.
#[derive(Clone, Default)]
pub(crate) struct HostLife {
    /// Cancelled when the host begins to shut down: no instance starts any more.
    pub shutting_down: CancellationToken,
    /// Cancelled when the host's shutdown bound has passed: every stop still draining closes
    /// its sessions at once, whatever timeout it was given.
    pub hurry: CancellationToken,
}

/// How a run ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited cleanly and is not restarted: `stopped`.
    Stopped,
    /// It crashed and waits to be restarted: `backoff`, one more restart.
    Crashed,
    /// It is not restarted any more: `failed`.
    GaveUp,
}

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
    /// The addresses the current run's listeners hold, from its start to its end (also while
    /// an agent restarts: the host keeps the sockets).
    held: Vec<SocketAddr>,
}

/// A named server instance.
pub struct Instance {
    name: String,
    config: RwLock<Arc<ServerConfig>>,
    /// Bumped at every change of `config` (agents are sent a config only when it changed).
    config_version: std::sync::atomic::AtomicU64,
    status: Mutex<Status>,
    /// Serialises start and stop; holds the current run.
    run: tokio::sync::Mutex<Option<Box<dyn Run>>>,
    /// Carries out operations on the current run; set from its start until its stop ends.
    backend: RwLock<Option<Arc<dyn Backend>>>,
    /// Counters of the runs that ended.
    totals: Mutex<Counters>,
    env: InstanceEnv,
}

impl Instance {
    pub(crate) fn new(config: ServerConfig, env: InstanceEnv) -> Self {
        Self {
            name: config.name.clone(),
            config: RwLock::new(Arc::new(config)),
            config_version: std::sync::atomic::AtomicU64::new(1),
            status: Mutex::new(Status {
                state: ServerState::Stopped,
                last_error: None,
                started: None,
                listeners: Vec::new(),
                restarts: 0,
                pid: None,
                held: Vec::new(),
            }),
            run: tokio::sync::Mutex::new(None),
            backend: RwLock::new(None),
            totals: Mutex::default(),
            env,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn config_version(&self) -> u64 {
        self.config_version.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_config(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.config_version.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn state(&self) -> ServerState {
        self.status().state
    }

    /// Whether it is `running` (the dispatcher routes only to running instances).
    pub fn is_running(&self) -> bool {
        self.state() == ServerState::Running
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.backend.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts it: binds every listener or none. Starting a running instance does nothing; a
    /// start during a stop waits for the stop; a `failed` one starts afresh. The operation runs
    /// to its end even if the caller stops waiting (an HTTP client that hangs up cannot leave a
    /// half-started instance).
    pub async fn start(self: &Arc<Self>) -> Result<(), StartError> {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            this.start_locked(&mut run).await
        })
        .await
    }

    /// Stops it: closes the listeners, lets sessions drain for at most `timeout` (less if the
    /// host's shutdown bound passes first), then closes the rest. Stopping a stopped or failed
    /// instance does nothing. Runs to its end even if the caller stops waiting.
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
    /// again if it was running or is autostart. If the new config cannot start, the old one
    /// is put back (and started again if it was running) and the error returned.
    pub(crate) async fn reconfigure(
        self: &Arc<Self>,
        config: ServerConfig,
        timeout: Duration,
    ) -> Result<(), StartError> {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            let was_running = run.as_ref().is_some_and(|r| !r.ended());
            this.stop_locked(&mut run, timeout).await;
            let autostart = config.autostart;
            let old = this.config();
            this.set_config(Arc::new(config));
            if !(was_running || autostart) {
                return Ok(());
            }
            let Err(error) = this.start_locked(&mut run).await else {
                return Ok(());
            };
            this.set_config(old);
            if was_running {
                // The old config served a moment ago; if it cannot now, its own error shows.
                let _ = this.start_locked(&mut run).await;
            }
            Err(error)
        })
        .await
    }

    /// Takes a changed config whose every change is live ([`crate::config::changes`]), closing
    /// no session. A run takes it at once: limits apply to what it does next, listeners move
    /// (the new ones are bound first; if they cannot be, nothing changes and the error is
    /// returned). An instance that does not run just takes it. Serialised with start and stop,
    /// and runs to its end even if the caller stops waiting.
    pub(crate) async fn update(self: &Arc<Self>, config: ServerConfig) -> Result<(), StartError> {
        let this = self.clone();
        finish_detached(async move {
            let mut run = this.run.lock().await;
            let config = Arc::new(config);
            if let Some(current) = run.as_mut().filter(|r| !r.ended()) {
                let held = current.update(config.clone()).await?;
                let mut status = this.status();
                if status.state == ServerState::Running {
                    let tls = config.tls.is_some();
                    status.listeners = held.iter().map(|addr| listener_info(*addr, tls)).collect();
                }
                status.held = held;
            }
            this.set_config(config);
            // Agents learn the other instances' configs from their views.
            this.changed();
            Ok(())
        })
        .await
    }

    async fn start_locked(self: &Arc<Self>, run: &mut Option<Box<dyn Run>>) -> Result<(), StartError> {
        match run.take() {
            Some(current) if !current.ended() => {
                let restarting = matches!(self.state(), ServerState::Backoff | ServerState::Starting);
                if restarting {
                    current.start_now();
                }
                *run = Some(current);
                return if restarting { self.running_again().await } else { Ok(()) };
            }
            // A run that ended on its own (a supervisor that gave up) is cleared; an explicit
            // start begins afresh.
            Some(ended) => self.finish_run(ended, Duration::ZERO).await,
            None => {}
        }
        let failed = |this: &Self, message: String| {
            {
                let mut status = this.status();
                status.state = ServerState::Failed;
                status.last_error = Some(message.clone());
            }
            tracing::error!(server = %this.name, "start failed: {message}");
            this.changed();
            Err(StartError(message))
        };
        if self.env.life.shutting_down.is_cancelled() {
            return failed(self, "the host is shutting down".into());
        }
        let isolation = self.config().isolation;
        let Some(launcher) = self.env.launchers.get(isolation).cloned() else {
            return Err(StartError(format!(
                "{} is managed by the host (isolation {isolation})",
                self.name
            )));
        };
        {
            let mut status = self.status();
            status.state = ServerState::Starting;
            status.last_error = None;
        }
        self.changed();
        match launcher.launch(self).await {
            Ok(started) => {
                *run = Some(started);
                Ok(())
            }
            Err(StartError(message)) => {
                self.set_backend(None);
                self.status().held.clear();
                failed(self, message)
            }
        }
    }

    /// Waits until a run that restarts serves again (or gives up).
    async fn running_again(&self) -> Result<(), StartError> {
        let mut topology = self.env.topology.subscribe();
        let deadline = tokio::time::Instant::now() + RESTART_WAIT;
        loop {
            match self.state() {
                ServerState::Running => return Ok(()),
                ServerState::Backoff | ServerState::Starting => {}
                _ => {
                    let error = self.status().last_error.clone();
                    return Err(StartError(
                        error.unwrap_or_else(|| format!("{} did not start", self.name)),
                    ));
                }
            }
            if tokio::time::timeout_at(deadline, topology.changed()).await.is_err() {
                return Err(StartError(format!(
                    "{} was not running again within {RESTART_WAIT:?}",
                    self.name
                )));
            }
        }
    }

    async fn stop_locked(&self, run: &mut Option<Box<dyn Run>>, timeout: Duration) {
        let Some(current) = run.take() else { return };
        if current.ended() {
            return self.finish_run(current, Duration::ZERO).await;
        }
        self.status().state = ServerState::Stopping;
        self.changed();
        let began = Instant::now();
        self.finish_run(current, timeout).await;
        let mut status = self.status();
        status.state = ServerState::Stopped;
        status.started = None;
        status.listeners.clear();
        status.pid = None;
        drop(status);
        self.changed();
        tracing::info!(server = %self.name, elapsed = ?began.elapsed(), "stopped");
    }

    /// Stops a run and keeps its counters.
    async fn finish_run(&self, run: Box<dyn Run>, timeout: Duration) {
        run.stop(timeout, self.env.life.hurry.clone()).await;
        self.status().held.clear();
        if let Some(backend) = self.set_backend(None) {
            let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
            *totals = *totals
                + Counters {
                    sessions: 0,
                    ..backend.stats()
                };
        }
    }

    /// Records the addresses a run's listeners hold, for as long as the run lasts.
    pub(crate) fn hold(&self, addresses: Vec<SocketAddr>) {
        self.status().held = addresses;
    }

    /// The addresses the current run holds (a changed config need not bind them anew).
    pub(crate) fn held(&self) -> Vec<SocketAddr> {
        self.status().held.clone()
    }

    /// Records a run that now serves: its process, its listeners, how to reach it.
    pub(crate) fn mark_running(&self, pid: Option<u32>, listeners: Vec<ListenerInfo>, backend: Arc<dyn Backend>) {
        self.set_backend(Some(backend));
        {
            let mut status = self.status();
            status.state = ServerState::Running;
            status.started = Some((SystemTime::now(), Instant::now()));
            status.pid = pid;
            let bound: Vec<String> = listeners.iter().map(|l| format!("{}:{}", l.ip, l.port)).collect();
            tracing::info!(server = %self.name, listeners = ?bound, pid, "started");
            status.listeners = listeners;
        }
        self.changed();
    }

    /// Records a run that ended on its own (an agent that died), and why.
    pub(crate) fn mark_down(&self, ending: Ending, error: Option<String>) {
        {
            let mut status = self.status();
            status.state = match ending {
                Ending::Stopped => ServerState::Stopped,
                Ending::Crashed => ServerState::Backoff,
                Ending::GaveUp => ServerState::Failed,
            };
            status.started = None;
            status.pid = None;
            status.listeners.clear();
            if error.is_some() {
                status.last_error = error;
            }
            status.restarts += u64::from(ending == Ending::Crashed);
        }
        self.changed();
    }

    /// Takes the state the host reports for an instance it runs elsewhere (an agent's view of
    /// the host's other instances); operations go through `backend` while it runs.
    pub(crate) fn observe(&self, info: &ServerInfo, config: Option<ServerConfig>, backend: Arc<dyn Backend>) {
        if let Some(config) = config {
            self.set_config(Arc::new(config));
        }
        let running = info.state == ServerState::Running;
        self.set_backend(running.then_some(backend));
        let mut status = self.status();
        status.state = info.state;
        status.listeners.clone_from(&info.listeners);
        status.pid = info.pid;
        status.restarts = info.restarts;
        status.last_error.clone_from(&info.last_error);
    }

    /// Sets how operations reach the current run; returns the one before.
    fn set_backend(&self, backend: Option<Arc<dyn Backend>>) -> Option<Arc<dyn Backend>> {
        std::mem::replace(&mut *self.backend.write().unwrap_or_else(|e| e.into_inner()), backend)
    }

    /// Tells whoever follows the instances that this one changed: its state, its listeners or
    /// its config.
    fn changed(&self) {
        self.env.topology.send_modify(|version| *version += 1);
        if let Some(hook) = &self.env.states.0 {
            let status = self.status();
            let event = StateEvent {
                name: self.name.clone(),
                state: status.state,
                last_error: status.last_error.clone(),
            };
            drop(status);
            hook(event);
        }
    }

    /// Its counters since the host started: the runs that ended, and the current one.
    pub(crate) fn counters(&self) -> Counters {
        let totals = *self.totals.lock().unwrap_or_else(|e| e.into_inner());
        match self.backend() {
            Some(backend) => totals + backend.stats(),
            None => totals,
        }
    }

    /// The `Server` JSON of the admin API.
    pub fn info(&self) -> ServerInfo {
        let config = self.config();
        let status = self.status().clone();
        let counters = self.counters();
        let pid = match config.isolation {
            Isolation::Process => status.pid,
            _ => Some(std::process::id()),
        };
        ServerInfo {
            name: self.name.clone(),
            server_type: config.server_type.clone(),
            state: status.state,
            isolation: config.isolation,
            autostart: config.autostart,
            pid,
            listeners: status.listeners,
            sessions: counters.sessions,
            max_connections: config.max_connections as u64,
            total_sessions: counters.total_sessions,
            total_packages: counters.total_packages,
            bytes_in: counters.bytes_in,
            bytes_out: counters.bytes_out,
            started_at: status.started.map(|(at, _)| rfc3339(at)),
            uptime_secs: status.started.map_or(0, |(_, since)| since.elapsed().as_secs()),
            restarts: status.restarts,
            last_error: status.last_error,
            labels: config.labels.clone(),
            // The host knows what processes use.
            rss_bytes: None,
            cpu_percent: None,
        }
    }

    /// Connections closed at once over `max_connections` since the host started.
    pub fn rejected(&self) -> u64 {
        self.counters().rejected
    }

    /// Why it is running but not answering, if it is not (a frozen agent).
    pub fn trouble(&self) -> Option<String> {
        self.backend()?.trouble()
    }

    fn not_running<T>() -> Pending<T> {
        Pending::ready(Err(OpError::NotRunning))
    }

    /// Queues bytes for one of its sessions. The bytes are submitted now, in order with what
    /// this caller submitted before; awaiting the result tells whether they were queued for the
    /// session, or why not (no such session, a slow reader, the instance not running or not
    /// answering in time).
    pub fn send_to(&self, session: SessionId, bytes: Bytes) -> Pending<()> {
        match self.backend() {
            Some(backend) => backend.send_to(session, bytes),
            None => Self::not_running(),
        }
    }

    /// Queues bytes for each of `sessions` (one trip for all of them, however many they are);
    /// the outcome is how many took them. Each session gets them in order with what this caller
    /// submitted before, as with [`send_to`](Self::send_to).
    pub fn multicast(&self, sessions: Vec<SessionId>, bytes: Bytes) -> Pending<usize> {
        match self.backend() {
            Some(backend) => backend.multicast(sessions, bytes),
            None => Self::not_running(),
        }
    }

    /// Queues bytes for every one of its sessions; the outcome is how many took them.
    pub fn broadcast(&self, bytes: Bytes) -> Pending<usize> {
        match self.backend() {
            Some(backend) => backend.broadcast(bytes),
            None => Self::not_running(),
        }
    }

    /// Sends a request to its service's `call` handler; the outcome is the answer. The message
    /// is JSON so that the same call works whatever the instance's isolation. The call is
    /// submitted now: calls made one after another start in that order (a handler that takes
    /// a lock before it first waits handles them in that order too), so a caller may make
    /// several before awaiting any.
    pub fn call(&self, request: serde_json::Value) -> Pending<serde_json::Value> {
        match self.backend() {
            Some(backend) => backend.call(request),
            None => Self::not_running(),
        }
    }

    /// Up to `limit` open sessions, oldest first (none while it is not running).
    pub async fn sessions(&self, limit: usize) -> Result<Vec<SessionInfo>, OpError> {
        let Some(backend) = self.backend() else {
            return Ok(Vec::new());
        };
        match backend.sessions(limit).await {
            Err(OpError::NotRunning) => Ok(Vec::new()),
            listed => listed,
        }
    }

    /// Closes one of its sessions (`local_closing`).
    pub async fn kick(&self, session: SessionId) -> Result<(), OpError> {
        self.backend().ok_or(OpError::NotRunning)?.kick(session).await
    }
}
