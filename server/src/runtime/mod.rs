//! Runs of an instance inside this process — on the host's runtime (isolation `none`), on a
//! runtime of its own (`runtime`), or inside an agent, on the sockets the host handed over:
//! binding, accept loops, one task per session, and the graceful stop.
//!
//! Layout: `listener` binds, `accept` takes connections (and, at a stop, the backlog),
//! `driver` runs a session with `buffers` its worker lends it, `types` is the catalog of
//! server types.
//!
//! A live change of config ([`Run::update`]) reaches a run here: the limits through its
//! [`InstanceContext`] (read once per accept and once per session, never per message), the
//! listeners by a move that starts accepting on the new ones before the old ones close.

pub(crate) mod accept;
pub(crate) mod driver;
pub(crate) mod listener;
mod steps;
pub(crate) mod types;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use supersocket_proto::ListenerInfo;
use supersocket_proto::agent::Counters;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::accept::{AcceptLoop, Admission};
use self::types::{ErasedService, ServerTypes};
use crate::config::{ListenerConfig, ServerConfig};
use crate::context::InstanceContext;
use crate::dispatch::HostHandle;
use crate::instance::{Backend, Instance, Launch, REQUEST_DEADLINE, Run, StartError, listener_info};
use crate::outcome::{BoxFuture, OpError, Pending};
use crate::session::{CloseReason, SessionId};

/// Starts runs in this process.
pub(crate) struct LocalLaunch {
    types: ServerTypes,
    host: HostHandle,
    /// Listening sockets the host handed over (in an agent), used instead of binding.
    handed_over: Mutex<Option<Vec<TcpListener>>>,
    /// Where the sockets for a live change of the listeners arrive (in an agent).
    handed_later: Option<Handed>,
}

/// The listening sockets the host bound for the live change an agent is taking, in the order
/// of the new listeners it did not hold (the agent puts them here just before the change).
pub(crate) type Handed = Arc<Mutex<Vec<TcpListener>>>;

impl LocalLaunch {
    pub(crate) fn new(types: ServerTypes, host: HostHandle) -> Self {
        Self {
            types,
            host,
            handed_over: Mutex::new(None),
            handed_later: None,
        }
    }

    /// A launcher whose first run serves `listeners` instead of binding its own, and whose
    /// runs take the sockets of a live change from `later` rather than binding them.
    pub(crate) fn with_listeners(
        types: ServerTypes,
        host: HostHandle,
        listeners: Vec<TcpListener>,
        later: Handed,
    ) -> Self {
        let mut launch = Self::new(types, host);
        launch.handed_later = Some(later);
        *launch.handed_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(listeners);
        launch
    }
}

impl Launch for LocalLaunch {
    fn launch<'a>(&'a self, instance: &'a Arc<Instance>) -> BoxFuture<'a, Result<Box<dyn Run>, StartError>> {
        Box::pin(async move {
            let config = instance.config();
            let handed_over = self.handed_over.lock().unwrap_or_else(|e| e.into_inner()).take();
            let types = self.types.clone();
            // Making the service, reading (or making) TLS material and binding all touch the
            // system: off the runtime's workers.
            let prepared = tokio::task::spawn_blocking({
                let config = config.clone();
                move || prepare(&types, &config, handed_over)
            })
            .await
            .map_err(|_| StartError("the start was cut short".into()))?
            .map_err(StartError)?;
            instance.hold(prepared.listeners.iter().filter_map(|l| l.local_addr().ok()).collect());
            let (mut run, listeners, backend) = prepared.start(instance.name(), config, self.host.clone())?;
            run.handed.clone_from(&self.handed_later);
            instance.mark_running(None, listeners, backend.clone());
            backend.service.started(&backend.context);
            Ok(Box::new(run) as Box<dyn Run>)
        })
    }
}

/// What a run needs that is made off the runtime.
struct Prepared {
    service: Arc<dyn ErasedService>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    listeners: Vec<TcpListener>,
    /// The runtime of its own under isolation `runtime`.
    runtime: Option<tokio::runtime::Runtime>,
}

fn prepare(
    types: &ServerTypes,
    config: &ServerConfig,
    handed_over: Option<Vec<TcpListener>>,
) -> Result<Prepared, String> {
    let service = types.make(config)?;
    let tls = config.tls.as_ref().map(crate::config::tls::acceptor).transpose()?;
    let listeners = match handed_over {
        Some(listeners) => listeners,
        None => listener::bind_all(config)?,
    };
    let runtime = match config.isolation {
        supersocket_proto::Isolation::Runtime => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.threads.unwrap_or(1))
                .thread_name(format!("ss-{}", config.name))
                .enable_all()
                .build()
                .map_err(|e| format!("cannot create the runtime of {}: {e}", config.name))?,
        ),
        _ => None,
    };
    Ok(Prepared {
        service,
        tls,
        listeners,
        runtime,
    })
}

impl Prepared {
    /// Starts accepting on every listener.
    fn start(
        self,
        name: &str,
        config: Arc<ServerConfig>,
        host: HostHandle,
    ) -> Result<(LocalRun, Vec<ListenerInfo>, Arc<LocalBackend>), StartError> {
        let handle = self
            .runtime
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |rt| rt.handle().clone());
        let (listen, drain, hard) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let sessions = TaskTracker::new();
        let context = Arc::new(InstanceContext {
            name: name.to_owned(),
            config: std::sync::RwLock::new(config.clone()),
            sessions: Arc::default(),
            stats: Arc::default(),
            host,
            tasks: sessions.clone(),
            stopping: drain.clone(),
            runtime: handle.clone(),
        });
        let weak = Arc::downgrade(&context);
        context.spawn(crate::session::sweeper::run(context.sessions.clone(), move || {
            weak.upgrade().and_then(|context| context.config().idle_timeout)
        }));
        let backend = Arc::new(LocalBackend {
            service: self.service,
            context,
        });
        let mut run = LocalRun {
            backend: backend.clone(),
            tls: self.tls,
            listen,
            drain,
            hard,
            accept_loops: Vec::new(),
            sessions,
            runtime: self.runtime,
            handle,
            handed: None,
        };
        run.accept_loops = run.accept_all(self.listeners.into_iter().zip(&config.listeners))?;
        let infos = run.listeners();
        Ok((run, infos, backend))
    }
}

/// One listener of a run: what the config asked for, where it is bound, and its accept loop.
struct Listening {
    config: ListenerConfig,
    info: ListenerInfo,
    /// The socket, shared with its accept loop (a live change may give it a new backlog).
    socket: Arc<tokio::net::TcpListener>,
    /// Cancelled to close this listener alone (a child of the run's `listen`).
    listen: CancellationToken,
    accept_loop: JoinHandle<()>,
}

impl std::os::fd::AsFd for Listening {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Listening {
    /// Closes it once its accept loop has taken the connections queued in its backlog.
    async fn close(self) {
        self.listen.cancel();
        let _ = self.accept_loop.await;
    }
}

/// The handles of a run in this process.
struct LocalRun {
    backend: Arc<LocalBackend>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    listen: CancellationToken,
    drain: CancellationToken,
    hard: CancellationToken,
    accept_loops: Vec<Listening>,
    sessions: TaskTracker,
    runtime: Option<tokio::runtime::Runtime>,
    /// The runtime its tasks run on.
    handle: tokio::runtime::Handle,
    /// In an agent: where new listening sockets come from (the host binds them).
    handed: Option<Handed>,
}

impl LocalRun {
    /// Starts accepting on `listener`, bound for `config`.
    fn accept_on(&self, listener: TcpListener, config: ListenerConfig) -> Result<Listening, StartError> {
        let addr = listener.local_addr().map_err(|e| StartError(e.to_string()))?;
        let listen = self.listen.child_token();
        // Registered with the reactor of the runtime it runs on.
        let socket = {
            let _enter = self.handle.enter();
            Arc::new(tokio::net::TcpListener::from_std(listener).map_err(|e| StartError(e.to_string()))?)
        };
        let accept = AcceptLoop {
            listener: socket.clone(),
            listen: listen.clone(),
            passed: config.fd_name.is_some(),
            admission: Admission {
                tls: self.tls.clone(),
                service: self.backend.service.clone(),
                instance: self.backend.context.clone(),
                hard: self.hard.clone(),
                sessions: self.sessions.clone(),
            },
        };
        Ok(Listening {
            config,
            info: listener_info(addr, self.tls.is_some()),
            socket,
            listen,
            accept_loop: self.handle.spawn(accept.run()),
        })
    }

    /// Starts accepting on every one of `listeners`, or on none: if one cannot start, those
    /// started close again (their connections become sessions like any other).
    fn accept_all<'a>(
        &self,
        listeners: impl IntoIterator<Item = (TcpListener, &'a ListenerConfig)>,
    ) -> Result<Vec<Listening>, StartError> {
        let mut started = Vec::new();
        for (listener, config) in listeners {
            match self.accept_on(listener, config.clone()) {
                Ok(listening) => started.push(listening),
                Err(error) => {
                    for listening in started {
                        self.handle.spawn(listening.close());
                    }
                    return Err(error);
                }
            }
        }
        Ok(started)
    }

    /// Sockets for the listeners of `config`: bound here, or in an agent those the host bound
    /// and handed over for this change.
    async fn new_sockets(&self, config: ServerConfig) -> Result<Vec<TcpListener>, StartError> {
        let Some(handed) = &self.handed else {
            return tokio::task::spawn_blocking(move || listener::bind_all(&config))
                .await
                .map_err(|_| StartError("the bind was cut short".into()))?
                .map_err(StartError);
        };
        let handed = std::mem::take(&mut *handed.lock().unwrap_or_else(|e| e.into_inner()));
        let needed = config.listeners.len();
        if handed.len() != needed {
            return Err(StartError(format!(
                "the host handed over {} listening sockets for the {needed} new listeners",
                handed.len()
            )));
        }
        Ok(handed)
    }

    fn listeners(&self) -> Vec<ListenerInfo> {
        self.accept_loops.iter().map(|l| l.info.clone()).collect()
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.accept_loops
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect()
    }

    /// Moves to the listeners of `config` (see [`listener::Move`]): the new ones are bound and
    /// accept (all of them, or nothing changes), then the old ones that are gone close, each
    /// once its backlog is taken. The sessions of every listener stay.
    async fn move_listeners(&mut self, config: &ServerConfig) -> Result<(), StartError> {
        let held: Vec<ListenerConfig> = self.accept_loops.iter().map(|l| l.config.clone()).collect();
        let plan = listener::Move::new(&held, config);
        // A move that only drops listeners closes them without leaving the runtime first.
        let sockets = match plan.fresh().next() {
            Some(_) => self.new_sockets(plan.to_bind()).await?,
            None => Vec::new(),
        };
        let fresh = self.accept_all(sockets.into_iter().zip(plan.fresh()))?;
        let (serving, gone) = plan.arrange(std::mem::take(&mut self.accept_loops), fresh);
        for (mut listening, wanted) in serving {
            listening.config = wanted.clone();
            self.accept_loops.push(listening);
        }
        for listening in gone {
            listening.close().await;
        }
        Ok(())
    }
}

impl Run for LocalRun {
    /// Takes a config whose changes are all live: the listeners move first (if they cannot,
    /// nothing changes); then the limits apply — `max_connections` from the next accept,
    /// `idle_timeout` from the sweeper's next look, `max_package_length` and the send queue's
    /// bounds to the sessions opened from now on (an open session keeps those it opened with).
    fn update(&mut self, config: Arc<ServerConfig>) -> BoxFuture<'_, Result<Vec<SocketAddr>, StartError>> {
        Box::pin(async move {
            let held = self.accept_loops.iter().map(|l| &l.config);
            if !held.eq(&config.listeners) {
                self.move_listeners(&config).await?;
            }
            self.backend.context.set_config(config);
            Ok(self.addresses())
        })
    }

    /// Closes the listeners once their backlog is taken, lets sessions drain for at most
    /// `timeout` (or until `hurry`), then closes the rest.
    fn stop(self: Box<Self>, timeout: Duration, hurry: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.listen.cancel();
            for listening in self.accept_loops {
                listening.close().await;
            }
            let context = &self.backend.context;
            self.backend.service.stopping(context);
            self.drain.cancel();
            // Tell every session (every one is registered, as no accept loop runs any more).
            context.sessions.for_each(|session| session.outbox.stop());
            self.sessions.close();
            let drained = tokio::select! {
                drained = tokio::time::timeout(timeout, self.sessions.wait()) => drained.is_ok(),
                () = hurry.cancelled() => false,
            };
            if !drained {
                self.hard.cancel();
                self.sessions.wait().await;
            }
            if let Some(runtime) = self.runtime {
                runtime.shutdown_background();
            }
        })
    }
}

/// Operations on a run in this process.
struct LocalBackend {
    service: Arc<dyn ErasedService>,
    context: Arc<InstanceContext>,
}

impl Backend for LocalBackend {
    fn send_to(&self, session: SessionId, bytes: Bytes) -> Pending<()> {
        self.context.sessions.send(session, bytes)
    }

    fn multicast(&self, sessions: Vec<SessionId>, bytes: Bytes) -> Pending<usize> {
        self.context.sessions.multicast(&sessions, &bytes)
    }

    fn broadcast(&self, bytes: Bytes) -> Pending<usize> {
        self.context.sessions.broadcast(&bytes)
    }

    fn call(&self, request: serde_json::Value) -> Pending<serde_json::Value> {
        let handler = self.service.clone().call(self.context.clone(), request);
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        let answer = match start(&self.context.runtime, handler) {
            Started::Ended(Ok(answer)) => return Pending::ready(answer.map_err(OpError::Refused)),
            Started::Ended(Err(_)) => return Pending::ready(Err(handler_panicked())),
            Started::Waits(answer) => answer,
        };
        Pending::waiting(async move {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(answer)) => answer.map_err(OpError::Refused),
                Ok(Err(_)) => Err(handler_panicked()),
                Err(_) => Err(OpError::Unanswered),
            }
        })
    }

    fn sessions(&self, limit: usize) -> BoxFuture<'static, Result<Vec<supersocket_proto::SessionInfo>, OpError>> {
        let list = self.context.sessions.list(limit);
        Box::pin(std::future::ready(Ok(list)))
    }

    fn kick(&self, session: SessionId) -> BoxFuture<'static, Result<(), OpError>> {
        let closed = self.context.sessions.close(session, CloseReason::LocalClosing);
        Box::pin(std::future::ready(closed))
    }

    fn stats(&self) -> Counters {
        self.context.stats.snapshot()
    }
}

fn handler_panicked() -> OpError {
    OpError::Refused("the handler panicked".into())
}

/// How far [`start`] took a future.
enum Started<T> {
    /// To its end (or its panic).
    Ended(std::thread::Result<T>),
    /// To its first wait; a task on the runtime runs the rest.
    Waits(JoinHandle<T>),
}

/// Runs `future` up to its first wait here and now, then hands the rest to a task on
/// `runtime`. Futures started one after another thus reach their first wait in that order
/// (spawned tasks alone start in no promised order); the rest runs on the callee's own runtime,
/// so a busy caller cannot starve it (and vice versa).
fn start<T: Send + 'static>(runtime: &tokio::runtime::Handle, mut future: BoxFuture<'static, T>) -> Started<T> {
    let _on_its_runtime = runtime.enter();
    // The task polls again at once with its own waker: a future registers the waker of its
    // latest poll, so this first one's needs none.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
        Ok(std::task::Poll::Ready(output)) => Started::Ended(Ok(output)),
        Ok(std::task::Poll::Pending) => Started::Waits(runtime.spawn(future)),
        Err(panic) => Started::Ended(Err(panic)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::{LocalLaunch, Started, start};
    use crate::config::{ListenerConfig, ServerConfig};
    use crate::dispatch::{Directory, HostHandle};
    use crate::instance::{HostLife, Instance, InstanceEnv, Launchers, StateHook};
    use crate::runtime::types::ServerTypes;
    use crate::services::EchoService;

    fn listener(ip: [u8; 4]) -> ListenerConfig {
        ListenerConfig {
            ip: ip.into(),
            port: 0,
            backlog: 64,
            fd_name: None,
        }
    }

    /// An `echo` instance run in this process on `listeners`, and the directory it lives in.
    fn echo_on(listeners: Vec<ListenerConfig>) -> (Arc<Instance>, Arc<Directory>) {
        let mut types = ServerTypes::default();
        types.register("echo", |_: &_| Ok::<_, String>(EchoService));
        let directory = Arc::new(Directory::new(Default::default(), Default::default()));
        let launch = LocalLaunch::new(types, HostHandle(Arc::downgrade(&directory)));
        let env = InstanceEnv {
            launchers: Launchers {
                none: Some(Arc::new(launch)),
                ..Launchers::default()
            },
            topology: directory.topology(),
            life: HostLife::default(),
            states: StateHook::default(),
        };
        let config = ServerConfig {
            name: "Echo".into(),
            server_type: "echo".into(),
            listeners,
            ..ServerConfig::default()
        };
        (Arc::new(Instance::new(config, env)), directory)
    }

    fn echoes(stream: &mut std::net::TcpStream) -> bool {
        let mut back = [0u8; 5];
        stream.write_all(b"hello").is_ok() && stream.read_exact(&mut back).is_ok() && back == *b"hello"
    }

    /// On one thread nothing runs between the connects and the change: the connections are
    /// still in the dropped listener's queue when it closes.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_queued_on_a_listener_a_move_drops_are_served() {
        let (instance, _directory) = echo_on(vec![listener([127, 0, 0, 1]), listener([127, 0, 0, 2])]);
        instance.start().await.unwrap();
        let (dropped, kept) = (instance.held()[0], instance.held()[1]);
        // Every accept loop waits for its listener.
        tokio::task::yield_now().await;
        let mut queued: Vec<_> = (0..8).map(|_| std::net::TcpStream::connect(dropped).unwrap()).collect();
        assert_eq!(instance.counters().total_sessions, 0, "none taken yet");
        let moved = ServerConfig {
            listeners: vec![listener([127, 0, 0, 2])],
            ..(*instance.config()).clone()
        };
        instance.update(moved).await.unwrap();
        assert_eq!(instance.held(), [kept]);
        assert!(
            std::net::TcpStream::connect(dropped).is_err(),
            "the dropped listener is closed"
        );
        for stream in &mut queued {
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
        }
        let served = tokio::task::spawn_blocking(move || queued.iter_mut().all(echoes));
        assert!(served.await.unwrap(), "every queued connection is served");
        instance.stop(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_move_to_a_port_in_use_changes_nothing() {
        let (instance, _directory) = echo_on(vec![listener([127, 0, 0, 1])]);
        instance.start().await.unwrap();
        let before = instance.info().listeners;
        let held = instance.held();
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let moved = ServerConfig {
            listeners: vec![ListenerConfig {
                port: busy.local_addr().unwrap().port(),
                ..listener([127, 0, 0, 1])
            }],
            max_connections: 1,
            ..(*instance.config()).clone()
        };
        let error = instance.update(moved).await.unwrap_err();
        assert!(error.0.contains("is in use"), "{error}");
        assert_eq!((instance.info().listeners, instance.held()), (before, held.clone()));
        assert_eq!(
            instance.config().max_connections,
            ServerConfig::default().max_connections
        );
        let served = tokio::task::spawn_blocking(move || {
            let mut streams = [(); 2].map(|()| std::net::TcpStream::connect(held[0]).unwrap());
            streams.iter_mut().all(echoes)
        });
        assert!(served.await.unwrap(), "the old listener serves, under the old limit");
        instance.stop(std::time::Duration::from_secs(1)).await;
    }

    /// Calls that take a lock before they first wait, started one after another, take it in
    /// that order on a runtime of several workers (tasks spawned alone run in no promised order).
    #[test]
    fn futures_started_one_after_another_reach_their_first_wait_in_that_order() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let holder = runtime.block_on(order.clone().lock_owned());
        let mut waits = Vec::new();
        for i in 0..200 {
            let order = order.clone();
            let future = Box::pin(async move { order.lock().await.push(i) });
            match start(runtime.handle(), future) {
                Started::Waits(task) => waits.push(task),
                Started::Ended(_) => panic!("the lock is held: call {i} waits"),
            }
        }
        drop(holder);
        runtime.block_on(async {
            for task in waits {
                task.await.unwrap();
            }
        });
        assert_eq!(*order.blocking_lock(), (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_future_that_panics_before_it_waits_ends_as_a_panic() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let started = start::<()>(runtime.handle(), Box::pin(async { panic!("at once") }));
        assert!(matches!(started, Started::Ended(Err(_))));
    }
}
