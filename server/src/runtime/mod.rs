//! Runs of an instance inside this process — on the host's runtime (isolation `none`), on a
//! runtime of its own (`runtime`), or inside an agent, on the sockets the host handed over:
//! binding, accept loops, one task per session, and the graceful stop.
//!
//! Layout: `listener` binds, `accept` takes connections (and, at a stop, the backlog),
//! `driver` runs a session with `buffers` its worker lends it, `types` is the catalog of
//! server types.

pub(crate) mod accept;
pub(crate) mod driver;
pub(crate) mod listener;
mod steps;
pub(crate) mod types;

use std::net::TcpListener;
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
use crate::instance::{Backend, Instance, Launch, REQUEST_DEADLINE, Run, StartError};
use crate::outcome::{BoxFuture, OpError, Pending};
use crate::session::{CloseReason, SessionId};

/// Starts runs in this process.
pub(crate) struct LocalLaunch {
    types: ServerTypes,
    host: HostHandle,
    /// Listening sockets the host handed over (in an agent), used instead of binding.
    handed_over: Mutex<Option<Vec<TcpListener>>>,
    /// Where sockets the host hands over later arrive (in an agent), for live changes of the
    /// listeners.
    handed_later: Option<Handed>,
}

/// Listening sockets the host bound for an agent's live change of listeners, in the order they
/// came.
pub(crate) type Handed = Arc<Mutex<std::collections::VecDeque<TcpListener>>>;

impl LocalLaunch {
    pub(crate) fn new(types: ServerTypes, host: HostHandle) -> Self {
        Self {
            types,
            host,
            handed_over: Mutex::new(None),
            handed_later: None,
        }
    }

    /// A launcher whose first run serves `listeners` instead of binding its own, and takes
    /// new ones from `later` rather than binding them.
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
        for (listener, config) in self.listeners.into_iter().zip(&config.listeners) {
            let listening = run.accept_on(listener, config.clone())?;
            run.accept_loops.push(listening);
        }
        let infos = run.listeners();
        Ok((run, infos, backend))
    }
}

/// One listener of a run: what the config asked for, where it is bound, and its accept loop.
struct Listening {
    config: ListenerConfig,
    info: ListenerInfo,
    /// Cancelled to close this listener alone (a child of the run's `listen`).
    listen: CancellationToken,
    accept_loop: JoinHandle<()>,
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
        let accept = AcceptLoop {
            // Registered with the reactor of the runtime it runs on.
            listener: {
                let _enter = self.handle.enter();
                tokio::net::TcpListener::from_std(listener).map_err(|e| StartError(e.to_string()))?
            },
            listen: listen.clone(),
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
            info: ListenerInfo {
                ip: addr.ip().to_string(),
                port: addr.port(),
                tls: self.tls.is_some(),
            },
            listen,
            accept_loop: self.handle.spawn(accept.run()),
        })
    }

    /// Sockets for the listeners of `config`: bound here, or in an agent taken from those the
    /// host bound and handed over (all or none).
    async fn new_sockets(&self, config: ServerConfig) -> Result<Vec<TcpListener>, StartError> {
        let Some(handed) = &self.handed else {
            return tokio::task::spawn_blocking(move || listener::bind_all(&config))
                .await
                .map_err(|_| StartError("the bind was cut short".into()))?
                .map_err(StartError);
        };
        let mut handed = handed.lock().unwrap_or_else(|e| e.into_inner());
        let needed = config.listeners.len();
        if handed.len() < needed {
            return Err(StartError(format!(
                "the host handed over {} of the {needed} new listening sockets",
                handed.len()
            )));
        }
        Ok(handed.drain(..needed).collect())
    }

    fn listeners(&self) -> Vec<ListenerInfo> {
        self.accept_loops.iter().map(|l| l.info.clone()).collect()
    }

    /// Moves to the listeners of `config`: each listener it lists keeps a socket held for the
    /// same address (one each; a new `backlog` takes effect at the next start), the others are
    /// bound (all or none, or nothing changes); then the held ones it no longer lists close,
    /// each once its backlog is taken. The sessions of every listener stay.
    async fn move_listeners(&mut self, config: &ServerConfig) -> Result<(), StartError> {
        let held: Vec<ListenerConfig> = self.accept_loops.iter().map(|l| l.config.clone()).collect();
        let matched = listener::match_held(&held, &config.listeners);
        let to_bind = ServerConfig {
            listeners: (config.listeners.iter().zip(&matched))
                .filter(|(_, held)| held.is_none())
                .map(|(wanted, _)| wanted.clone())
                .collect(),
            ..config.clone()
        };
        let mut bound = self.new_sockets(to_bind).await?.into_iter();
        let mut held: Vec<Option<Listening>> = std::mem::take(&mut self.accept_loops).into_iter().map(Some).collect();
        for (wanted, matched) in config.listeners.iter().zip(matched) {
            let listening = match matched.and_then(|i| held[i].take()) {
                Some(listening) => Listening {
                    config: wanted.clone(),
                    ..listening
                },
                None => {
                    let socket = bound.next().expect("one socket bound per listener not held");
                    self.accept_on(socket, wanted.clone())?
                }
            };
            self.accept_loops.push(listening);
        }
        for listening in held.into_iter().flatten() {
            listening.listen.cancel();
            let _ = listening.accept_loop.await;
        }
        Ok(())
    }
}

impl Run for LocalRun {
    /// Takes a config whose changes are all live: new limits apply to the next connections
    /// (and `idle_timeout` at the next sweep), listeners move.
    fn update(&mut self, config: Arc<ServerConfig>) -> BoxFuture<'_, Result<Option<Vec<ListenerInfo>>, StartError>> {
        Box::pin(async move {
            let context = self.backend.context.clone();
            if context.config().listeners != config.listeners {
                self.move_listeners(&config).await?;
            }
            context.set_config(config);
            Ok(Some(self.listeners()))
        })
    }

    /// Closes the listeners once their backlog is taken, lets sessions drain for at most
    /// `timeout` (or until `hurry`), then closes the rest.
    fn stop(self: Box<Self>, timeout: Duration, hurry: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.listen.cancel();
            for listening in self.accept_loops {
                let _ = listening.accept_loop.await;
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
    use std::sync::Arc;

    use super::{Started, start};

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
