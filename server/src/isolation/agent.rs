//! The agent process (`supersocketd agent --name NAME`, started by the host, never by hand):
//! runs one instance on the listening sockets the host hands over, answers the host's requests
//! over the channel at descriptor 3, reports its counters, and reaches the host's other
//! instances: those in agents over the sockets the host paired it with, the rest (and any
//! agent whose socket is gone) through the host. Live changes of its instance's config come
//! straight from the host ([`Op::Update`]) and are taken one at a time, in the order they came.
//! It ends when the host hangs up or dies.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{SigHandler, Signal};
use supersocket_proto::agent::{Event, Init, Op, View};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::link::{Link, Serve};
use super::remote::Remote;
use super::serve::{serve, server_of};
use super::supervisor::STATS_EVERY;
use crate::config::{AGENT_THREADS, Isolation, ServerConfig};
use crate::dispatch::{Directory, HostHandle, RouteFn};
use crate::instance::{HostLife, Instance, InstanceEnv, Launchers, StateHook};
use crate::outcome::OpError;
use crate::runtime::types::ServerTypes;
use crate::runtime::{Handed, LocalLaunch};
use crate::session::SessionId;

/// The descriptor the host puts the control socket at.
const CONTROL_FD: i32 = 3;
/// How long an agent that is done waits for the host to end it.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Runs the agent of instance `name`, with the host's server types and custom routes, until the
/// host hangs up.
pub(crate) fn main(types: ServerTypes, routes: HashMap<String, RouteFn>, name: &str) -> ExitCode {
    // The host ends agents (a stop, or its own end); signals meant for the host's process group
    // (Ctrl-C in a terminal, a service manager's SIGTERM to every process) must not kill this
    // one before the host has drained it.
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
    }
    // SAFETY: the host placed the control socket at descriptor 3 for this process before exec,
    // and nothing else in the process uses that descriptor.
    let control = unsafe { StdUnixStream::from(OwnedFd::from_raw_fd(CONTROL_FD)) };
    let (init, fds) = match super::frame::recv_with_fds::<Init>(&control) {
        Ok(received) => received,
        Err(e) => {
            eprintln!("supersocketd agent {name}: no instructions from the host: {e}");
            return ExitCode::from(1);
        }
    };
    // The agent is the instance's own runtime: `threads` workers, its share of the cores if
    // unset. One worker is this thread alone: no scheduler between threads to pay for.
    let threads = match init.server.get("threads").and_then(serde_json::Value::as_u64) {
        Some(n) => n.clamp(1, 1024) as usize,
        None => default_threads(&init.view),
    };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("supersocketd agent {name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    SessionId::start_at(init.session_ids_from, init.session_key);
    let mut listeners = fds;
    let links = listeners.split_off(listeners.len().saturating_sub(init.links.len()));
    let listeners = listeners.into_iter().map(std::net::TcpListener::from).collect();
    let stopped = runtime.block_on(run((types, routes), control, init, listeners, links));
    runtime.shutdown_background();
    // Ending for any other reason than the host's stop is a failure (its policy restarts it).
    if stopped { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// An agent's share of the machine's cores: the cores divided among the host's instances that
/// run in agents and leave `threads` unset, at least one worker and at most [`AGENT_THREADS`].
/// An instance alone in its agent gets a worker per core; many agents on few cores do not wake
/// one another's idle workers all the time. (The first view an agent gets holds every config.)
fn default_threads(view: &View) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let leaves_it_to_the_host = |config: &Option<serde_json::Value>| {
        config
            .as_ref()
            .is_none_or(|config| config.get("threads").is_none_or(serde_json::Value::is_null))
    };
    let agents = view
        .instances
        .iter()
        .filter(|peer| peer.info.isolation == Isolation::Process && leaves_it_to_the_host(&peer.config))
        .count();
    (cores / agents.max(1)).clamp(1, AGENT_THREADS)
}

async fn run(
    (types, routes): (ServerTypes, HashMap<String, RouteFn>),
    control: StdUnixStream,
    init: Init,
    listeners: Vec<std::net::TcpListener>,
    links: Vec<OwnedFd>,
) -> bool {
    let Ok(stream) = control
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(control))
    else {
        return false;
    };
    let config = in_agent(init.server);
    let directory = Arc::new(Directory::new(routes, types.writers()));
    let (changes, to_take) = mpsc::unbounded_channel();
    let env = |launchers| InstanceEnv {
        launchers,
        topology: directory.topology(),
        life: HostLife::default(),
        states: StateHook::default(),
    };
    let agent = Arc::new_cyclic(|me| Agent {
        me: me.clone(),
        local: OnceLock::new(),
        directory: directory.clone(),
        peers: Mutex::default(),
        direct: Mutex::default(),
        link: OnceLock::new(),
        env: env(Launchers::default()),
        stopped: AtomicBool::new(false),
        arriving: Mutex::default(),
        changes,
    });
    for (server, fd) in init.links.iter().zip(links) {
        agent.link_to(server, fd);
    }
    let link = Link::start(stream, agent.clone());
    let _ = agent.link.set(link.clone());
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            agent.fail(&link, format!("bad server config from the host: {e}")).await;
            return false;
        }
    };
    let host = HostHandle(Arc::downgrade(&directory));
    let handed = Handed::default();
    let launch = LocalLaunch::with_listeners(types, host, listeners, handed.clone());
    let local = Arc::new(Instance::new(
        config,
        env(Launchers {
            none: Some(Arc::new(launch)),
            ..Launchers::default()
        }),
    ));
    let _ = agent.local.set(local.clone());
    // The host's instances are known before the service starts.
    agent.mirror(init.view);
    tokio::spawn(take_changes(local.clone(), link.clone(), handed, to_take));
    if let Err(e) = local.start().await {
        agent.fail(&link, e.0).await;
        return false;
    }
    link.event(Event::Ready {
        listeners: local.info().listeners,
    });
    let mut every = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            () = link.ended() => break,
            _ = every.tick() => link.event(Event::Stats(local.counters())),
        }
    }
    // The host hung up (or died), or stopped the instance: nothing is left to serve for.
    agent.stopped.load(Ordering::Acquire)
}

/// The host's config of the agent's instance, as it runs in the agent: in-process (the agent
/// is its isolation).
fn in_agent(config: serde_json::Value) -> Result<ServerConfig, serde_json::Error> {
    serde_json::from_value::<ServerConfig>(config).map(|config| ServerConfig {
        isolation: Isolation::None,
        ..config
    })
}

/// A live change of the agent's own instance, as the host asked it.
struct Change {
    /// The request, answered once the change is taken.
    id: u64,
    config: ServerConfig,
    /// The sockets for the listeners it adds, in order.
    sockets: Vec<std::net::TcpListener>,
}

/// Takes the changes one at a time, in the order the host asked them, and answers each.
async fn take_changes(local: Arc<Instance>, link: Link, handed: Handed, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(Change { id, config, sockets }) = changes.recv().await {
        *handed.lock().unwrap_or_else(|e| e.into_inner()) = sockets;
        let taken = local.update(config).await;
        link.reply(
            id,
            taken
                .map(|()| serde_json::Value::Null)
                .map_err(|e| OpError::Refused(e.0)),
        );
    }
}

/// One of the host's other instances, and the way to it (through the host).
type Peer = (Arc<Instance>, Arc<Remote>);

/// The agent: its instance, its view of the host's others, and its link to the host.
struct Agent {
    /// Itself, for the links it starts from a handler.
    me: Weak<Agent>,
    local: OnceLock<Arc<Instance>>,
    directory: Arc<Directory>,
    /// The host's other instances, by name.
    peers: Mutex<HashMap<String, Peer>>,
    /// Links to other agents, by the instance they run.
    direct: Mutex<HashMap<String, Link>>,
    /// The link to the host.
    link: OnceLock<Link>,
    /// What the views of the host's other instances are made with: no launchers (the host
    /// runs them).
    env: InstanceEnv,
    /// The host stopped the instance.
    stopped: AtomicBool,
    /// Listening sockets the host handed over for the next live change, in order.
    arriving: Mutex<Vec<std::net::TcpListener>>,
    /// Where live changes go to be taken in order (the host asks one at a time, so this holds
    /// more only when it stopped waiting for an answer).
    changes: mpsc::UnboundedSender<Change>,
}

impl Agent {
    /// Tells the host why the instance cannot run, and waits for the host to end the agent.
    async fn fail(&self, link: &Link, error: String) {
        link.event(Event::Failed { error });
        let _ = tokio::time::timeout(LAST_WORD, link.ended()).await;
    }

    /// Takes the host's view: its own instance keeps its place in the host's order (the
    /// dispatcher indexes it), every other one is a view of the host's whose operations go
    /// through the host.
    fn mirror(&self, view: View) {
        let (Some(local), Some(link)) = (self.local.get(), self.link.get()) else {
            return;
        };
        let mut peers = self.peers();
        let mut ordered = Vec::with_capacity(view.instances.len());
        let mut next = HashMap::with_capacity(view.instances.len());
        for peer in view.instances {
            let name = peer.info.name.clone();
            if name == local.name() {
                ordered.push(local.clone());
                continue;
            }
            let config = match peer.config.map(serde_json::from_value::<ServerConfig>) {
                Some(Ok(config)) => Some(config),
                Some(Err(e)) => {
                    tracing::error!(server = %name, "unreadable config from the host: {e}");
                    continue;
                }
                None => None,
            };
            let known = peers.remove(&name);
            let (instance, remote) = match (known, config) {
                (Some(known), config) => {
                    known.0.observe(&peer.info, config, known.1.clone());
                    known
                }
                (None, Some(config)) => {
                    let remote = Arc::new(Remote::new(&name));
                    let direct = self.direct().get(&name).cloned();
                    remote.attach(Some(direct.unwrap_or_else(|| link.clone())));
                    let instance = Arc::new(Instance::new(config, self.env.clone()));
                    instance.observe(&peer.info, None, remote.clone());
                    (instance, remote)
                }
                (None, None) => {
                    tracing::error!(server = %name, "the host named an instance without its config");
                    continue;
                }
            };
            remote.set_counters(counters_of(&peer.info));
            ordered.push(instance.clone());
            next.insert(name, (instance, remote));
        }
        *peers = next;
        drop(peers);
        self.directory.replace(ordered);
    }
}

impl Agent {
    fn direct(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaches `server`'s agent over `socket` from now on; through the host again once the
    /// socket closes (that agent ended).
    fn link_to(self: &Arc<Self>, server: &str, socket: OwnedFd) {
        let socket = StdUnixStream::from(socket);
        let Ok(stream) = socket.set_nonblocking(true).and_then(|()| UnixStream::from_std(socket)) else {
            return;
        };
        let link = Link::start(stream, self.clone());
        self.direct().insert(server.to_owned(), link.clone());
        if let Some((_, remote)) = self.peers().get(server) {
            remote.attach(Some(link.clone()));
        }
        let (agent, server) = (self.clone(), server.to_owned());
        tokio::spawn(async move {
            link.ended().await;
            let mut direct = agent.direct();
            if direct.get(&server).is_some_and(|known| known.same(&link)) {
                direct.remove(&server);
                drop(direct);
                if let (Some((_, remote)), Some(host)) = (agent.peers().get(&server), agent.link.get()) {
                    remote.attach(Some(host.clone()));
                }
            }
        });
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The counters in a `Server` report.
fn counters_of(info: &supersocket_proto::ServerInfo) -> supersocket_proto::agent::Counters {
    supersocket_proto::agent::Counters {
        sessions: info.sessions,
        total_sessions: info.total_sessions,
        rejected: 0,
        total_packages: info.total_packages,
        bytes_in: info.bytes_in,
        bytes_out: info.bytes_out,
    }
}

impl Serve for Agent {
    fn request(&self, link: &Link, id: u64, op: Op, payload: Bytes) {
        let Some(local) = self.local.get().cloned() else {
            return link.reply(id, Err(OpError::NotRunning));
        };
        let from_host = self.link.get().is_some_and(|host| host.same(link));
        match op {
            Op::Stop { .. } | Op::Sync(_) | Op::Update { .. } if !from_host => {
                link.reply(id, Err(OpError::Refused("only the host asks that".into())));
            }
            Op::Stop { timeout_ms } => {
                self.stopped.store(true, Ordering::Release);
                let link = link.clone();
                tokio::spawn(async move {
                    local.stop(Duration::from_millis(timeout_ms)).await;
                    link.reply(id, Ok(serde_json::Value::Null));
                });
            }
            Op::Sync(view) => {
                self.mirror(view);
                link.reply(id, Ok(serde_json::Value::Null));
            }
            Op::Update { config } => {
                // The sockets that came before this request are this change's.
                let sockets = std::mem::take(&mut *self.arriving.lock().unwrap_or_else(|e| e.into_inner()));
                let change = match in_agent(config) {
                    Ok(config) => Change { id, config, sockets },
                    Err(e) => return link.reply(id, Err(OpError::Refused(format!("bad server config: {e}")))),
                };
                if self.changes.send(change).is_err() {
                    link.reply(id, Err(OpError::NotRunning));
                }
            }
            op => {
                // Only its own instance is served here; the host reaches the others itself.
                let target = (server_of(&op) == Some(local.name())).then_some(local);
                serve(link, id, op, payload, target);
            }
        }
    }

    fn event(&self, link: &Link, event: Event) {
        let from_host = self.link.get().is_some_and(|host| host.same(link));
        match (event, from_host) {
            (Event::Link { server }, true) => match (link.take_fd(), self.me.upgrade()) {
                (Some(socket), Some(agent)) => agent.link_to(&server, socket),
                _ => tracing::error!(%server, "the host named a link to an agent without its socket"),
            },
            (Event::Listener { server }, true) => match link.take_fd() {
                Some(socket) => self
                    .arriving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(std::net::TcpListener::from(socket)),
                None => tracing::error!(%server, "the host named a listener without its socket"),
            },
            _ => {}
        }
    }
}
