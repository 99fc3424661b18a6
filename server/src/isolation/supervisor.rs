//! The host side of a process instance: binds its listeners in the host (so ports are decided
//! here and connections wait in the backlog while an agent restarts), starts an agent and hands
//! it the sockets, and supervises it in supervisord's manner: a start counts once the agent
//! reports ready; an agent that dies is restarted by policy with exponential back-off (state
//! `backoff`); after `max_retries` unstable starts the state is `failed`.

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use supersocket_proto::agent::{AgentRequest, AgentStats, Failure, FromAgent, HostRequest, Peer, Reply, ToAgent};
use supersocket_proto::{ListenerInfo, ServerState};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::channel::{self, Link};
use crate::config::{RestartPolicy, ServerConfig};
use crate::dispatch::Directory;
use crate::instance::{Instance, Live, bind_all};

/// How long an agent may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// An agent that ran this long was a stable start: the back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Time allowed beyond a stop's drain bound for the agent to answer.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// How often agents report their counters.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(200);

/// Log settings agents inherit from the host (`--log-format`, `--log-level`).
pub(crate) static AGENT_LOG_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// Set in every agent's environment; an agent never starts agents of its own.
const AGENT_MARKER: &str = "SUPERSOCKET_AGENT_OF";

/// Agents launched so far; each gets its own range of session ids.
static LAUNCHES: AtomicU64 = AtomicU64::new(1);

/// A supervised process instance.
pub(crate) struct AgentRun {
    /// Asks the supervisor to stop, with the drain bound.
    stop: watch::Sender<Option<Duration>>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl AgentRun {
    /// Binds the instance's listeners, starts its agent and supervises it; answers once the
    /// first agent is ready, or once the supervisor gives up.
    pub(crate) async fn start(instance: Arc<Instance>) -> Result<Self, String> {
        let listeners = bind_all(&instance.config())?;
        let (first, started) = oneshot::channel();
        let (stop, stop_asked) = watch::channel(None);
        let supervisor = tokio::spawn(supervise(instance, listeners, first, stop_asked));
        match started.await {
            Ok(Ok(())) => Ok(Self { stop, supervisor }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the supervisor ended".into()),
        }
    }

    /// Asks the agent to drain within `timeout`, then ends it and releases the listeners.
    pub(crate) async fn stop(self, timeout: Duration) {
        let _ = self.stop.send(Some(timeout));
        let _ = self.supervisor.await;
    }
}

/// One agent process and its channel.
struct Agent {
    child: tokio::process::Child,
    link: Arc<Link<ToAgent>>,
    pid: u32,
    listeners: Vec<ListenerInfo>,
    /// Its latest counters, added to the instance's when it dies.
    stats: Arc<Mutex<AgentStats>>,
    /// Handles what the agent sends (stats, requests for other instances).
    handler: tokio::task::JoinHandle<()>,
}

async fn supervise(
    instance: Arc<Instance>,
    listeners: Vec<TcpListener>,
    first: oneshot::Sender<Result<(), String>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut first = Some(first);
    let mut unstable = 0u32;
    let mut base = AgentStats::default();
    loop {
        let restart = instance.config().restart;
        let launched = tokio::select! {
            launched = launch(&instance, &listeners, base) => launched,
            _ = stop.changed() => return answer(&mut first, Err("stopped before it started".into())),
        };
        let error = match launched {
            Ok(mut agent) => {
                answer(&mut first, Ok(()));
                instance.mark_running(
                    Some(agent.pid),
                    agent.listeners.clone(),
                    Live::Agent(agent.link.clone()),
                );
                let began = Instant::now();
                tokio::select! {
                    status = agent.child.wait() => {
                        agent.handler.abort();
                        base = absorb(base, &agent.stats);
                        if began.elapsed() >= STABLE_AFTER {
                            unstable = 0;
                        }
                        let status = status.map_or_else(|e| format!("cannot wait for the agent: {e}"), describe);
                        tracing::warn!(server = %instance.name(), pid = agent.pid, "agent {status}");
                        let clean = status == "exited with code 0";
                        let again = match restart.policy {
                            RestartPolicy::Always => true,
                            RestartPolicy::OnFailure => !clean,
                            RestartPolicy::Never => false,
                        };
                        if !again {
                            let state = if clean { ServerState::Stopped } else { ServerState::Failed };
                            return instance.mark_down(state, Some(format!("agent {status}")), false);
                        }
                        format!("agent {status}")
                    }
                    _ = stop.changed() => {
                        let timeout = stop.borrow().unwrap_or_default();
                        let asked = agent.link.request(|id| ToAgent::Request {
                            id,
                            request: AgentRequest::Stop { timeout_ms: timeout.as_millis() as u64 },
                        });
                        let _ = tokio::time::timeout(timeout + STOP_MARGIN, asked).await;
                        let _ = agent.child.kill().await;
                        agent.handler.abort();
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(server = %instance.name(), "agent did not start: {error}");
                error
            }
        };
        unstable += 1;
        if unstable > restart.max_retries {
            let error = format!("{error}; gave up after {} unstable starts", restart.max_retries);
            instance.mark_down(ServerState::Failed, Some(error.clone()), false);
            return answer(&mut first, Err(error));
        }
        instance.mark_down(ServerState::Backoff, Some(error), true);
        let delay = restart
            .backoff
            .saturating_mul(1 << (unstable - 1).min(16))
            .min(restart.max_backoff);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return answer(&mut first, Err("stopped during back-off".into())),
        }
    }
}

fn answer(first: &mut Option<oneshot::Sender<Result<(), String>>>, outcome: Result<(), String>) {
    if let Some(first) = first.take() {
        let _ = first.send(outcome);
    }
}

/// Counters of agents that died, plus the last report of this one.
fn absorb(base: AgentStats, last: &Mutex<AgentStats>) -> AgentStats {
    let last = *last.lock().unwrap_or_else(|e| e.into_inner());
    AgentStats {
        sessions: 0,
        total_sessions: base.total_sessions + last.total_sessions,
        rejected: base.rejected + last.rejected,
        total_packages: base.total_packages + last.total_packages,
        bytes_in: base.bytes_in + last.bytes_in,
        bytes_out: base.bytes_out + last.bytes_out,
    }
}

/// `exited with code 3`, `killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("killed by signal {signal} ({name})")
        }
        _ => "ended".into(),
    }
}

/// Every instance of the host in config order (the agent's own included, so the agent can
/// keep the order the dispatcher indexes), as agents see them.
fn peers(directory: &Directory) -> Vec<Peer> {
    let peer = |i: &Arc<Instance>| Peer {
        config: serde_json::to_value(&*i.config()).unwrap_or_default(),
        info: i.info(),
    };
    directory.instances().iter().map(peer).collect()
}

/// Starts one agent, hands it the listeners and waits until it is ready.
async fn launch(instance: &Arc<Instance>, listeners: &[TcpListener], base: AgentStats) -> Result<Agent, String> {
    if std::env::var_os(AGENT_MARKER).is_some() {
        return Err("an agent does not start agents".into());
    }
    let directory = instance.directory().ok_or("the host is gone")?;
    let config = instance.config();
    let (host_end, agent_end) = StdUnixStream::pair().map_err(|e| format!("cannot make a control socket: {e}"))?;
    let mut command = tokio::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    command
        .args(AGENT_LOG_ARGS.get().into_iter().flatten())
        .arg("agent")
        .arg("--name")
        .arg(instance.name())
        .env(AGENT_MARKER, instance.name())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let control = agent_end.as_raw_fd();
    // SAFETY: runs in the child between fork and exec and only makes async-signal-safe system
    // calls: dup2 puts the control socket at descriptor 3 (without close-on-exec) and prctl
    // asks the kernel to kill the child when the host dies, so no agent outlives it.
    unsafe {
        command.pre_exec(move || {
            // Already at 3, it only needs close-on-exec cleared.
            let placed = if control == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(control, 3)
            };
            if placed == -1 {
                return Err(std::io::Error::last_os_error());
            }
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start the agent: {e}"))?;
    drop(agent_end);
    let pid = child.id().unwrap_or(0);
    let init = ToAgent::Init {
        server: serde_json::to_value(&*config).map_err(|e| e.to_string())?,
        session_ids_from: LAUNCHES.fetch_add(1, Ordering::Relaxed) << 40,
        peers: peers(&directory),
    };
    let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
    channel::send_with_fds(&host_end, &init, &fds).map_err(|e| format!("cannot hand over the listeners: {e}"))?;
    host_end.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = UnixStream::from_std(host_end).map_err(|e| e.to_string())?;
    let (link, mut incoming) = Link::<ToAgent>::start::<FromAgent>(stream);

    let ready = tokio::select! {
        message = incoming.recv() => match message {
            Some(FromAgent::Ready { listeners }) => Ok(listeners),
            Some(FromAgent::Failed { error }) => Err(error),
            Some(other) => Err(format!("the agent began with {other:?}")),
            None => Err("the agent hung up before it was ready".into()),
        },
        status = child.wait() => Err(status.map_or_else(|e| e.to_string(), |s| format!("agent {}", describe(s)))),
        () = tokio::time::sleep(START_TIMEOUT) => Err(format!("the agent was not ready within {START_TIMEOUT:?}")),
    };
    let listeners = match ready {
        Ok(listeners) => listeners,
        Err(error) => {
            let _ = child.kill().await;
            return Err(error);
        }
    };
    let stats = Arc::new(Mutex::new(AgentStats::default()));
    let handler = tokio::spawn(serve_agent(
        instance.clone(),
        directory,
        link.clone(),
        incoming,
        stats.clone(),
        base,
    ));
    Ok(Agent {
        child,
        link,
        pid,
        listeners,
        stats,
        handler,
    })
}

/// Handles what a running agent sends, and keeps it told about the other instances.
async fn serve_agent(
    instance: Arc<Instance>,
    directory: Arc<Directory>,
    link: Arc<Link<ToAgent>>,
    mut incoming: mpsc::Receiver<FromAgent>,
    latest: Arc<Mutex<AgentStats>>,
    base: AgentStats,
) {
    let mut topology = directory.watch();
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(FromAgent::Stats(stats)) => {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = stats;
                    report(&instance, base, stats);
                }
                Some(FromAgent::Request { id, request }) => {
                    let (directory, link) = (directory.clone(), link.clone());
                    tokio::spawn(async move {
                        let reply = for_other_instance(&directory, request).await;
                        link.send(ToAgent::Reply { id, reply }).await;
                    });
                }
                Some(_) => {}
                None => return,
            },
            changed = topology.changed() => {
                if changed.is_err() {
                    return;
                }
                link.send(ToAgent::Peers { peers: peers(&directory) }).await;
            }
        }
    }
}

/// The instance's counters: those of earlier agents plus this one's latest report.
fn report(instance: &Instance, base: AgentStats, now: AgentStats) {
    let stats = instance.stats();
    stats.sessions.store(now.sessions, Ordering::Relaxed);
    stats
        .total_sessions
        .store(base.total_sessions + now.total_sessions, Ordering::Relaxed);
    stats.rejected.store(base.rejected + now.rejected, Ordering::Relaxed);
    stats
        .total_packages
        .store(base.total_packages + now.total_packages, Ordering::Relaxed);
    stats.bytes_in.store(base.bytes_in + now.bytes_in, Ordering::Relaxed);
    stats.bytes_out.store(base.bytes_out + now.bytes_out, Ordering::Relaxed);
}

/// Carries out an agent's request on another instance of the host.
async fn for_other_instance(directory: &Directory, request: HostRequest) -> Reply {
    let server = match &request {
        HostRequest::Send { server, .. } | HostRequest::Broadcast { server, .. } | HostRequest::Call { server, .. } => {
            server
        }
    };
    let target = directory.instance(server).ok_or(Failure::NoSession)?;
    match request {
        HostRequest::Send { session, base64, .. } => channel::send(&target, &session, &base64).await,
        HostRequest::Broadcast { base64, .. } => channel::broadcast(&target, &base64).await,
        HostRequest::Call { request, .. } => channel::call(&target, request).await,
    }
}

/// The config an agent runs, as the host sent it.
pub(crate) fn server_config(value: serde_json::Value) -> Result<ServerConfig, String> {
    serde_json::from_value(value).map_err(|e| format!("bad server config from the host: {e}"))
}
