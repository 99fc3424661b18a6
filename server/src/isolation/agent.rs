//! The agent process (`supersocketd agent --name NAME`, started by the host, never by hand):
//! runs one instance on the listening sockets the host hands over, answers the host's requests
//! over the control channel (descriptor 3), and reaches the host's other instances through it.
//! It ends when the host hangs up or dies.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use supersocket_proto::agent::{AgentRequest, AgentStats, Failure, FromAgent, Peer, Reply, ToAgent};
use tokio::net::UnixStream;

use super::channel::{self, Link};
use super::supervisor::{STATS_EVERY, server_config};
use crate::config::{Isolation, ServerConfig};
use crate::dispatch::Directory;
use crate::host::HostBuilder;
use crate::instance::{Instance, Live};
use crate::session::SessionId;

/// The descriptor the host puts the control socket at.
const CONTROL_FD: i32 = 3;

/// Runs the agent of instance `name` until the host hangs up.
pub(crate) fn main(builder: HostBuilder, name: &str) -> ExitCode {
    // SAFETY: the host placed the control socket at descriptor 3 for this process before exec,
    // and nothing else in the process uses that descriptor.
    let control = unsafe { StdUnixStream::from(OwnedFd::from_raw_fd(CONTROL_FD)) };
    let (init, fds) = match channel::recv_with_fds::<ToAgent>(&control) {
        Ok(received) => received,
        Err(e) => {
            eprintln!("supersocketd agent {name}: no instructions from the host: {e}");
            return ExitCode::from(1);
        }
    };
    let ToAgent::Init {
        server,
        session_ids_from,
        peers,
    } = init
    else {
        eprintln!("supersocketd agent {name}: the host did not begin with Init");
        return ExitCode::from(1);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("supersocketd agent {name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    SessionId::start_at(session_ids_from);
    let listeners: Vec<std::net::TcpListener> = fds.into_iter().map(std::net::TcpListener::from).collect();
    runtime.block_on(run(builder, control, server, peers, listeners));
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

async fn run(
    builder: HostBuilder,
    control: StdUnixStream,
    server: serde_json::Value,
    peers: Vec<Peer>,
    listeners: Vec<std::net::TcpListener>,
) {
    if control.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(stream) = UnixStream::from_std(control) else {
        return;
    };
    let (link, mut incoming) = Link::<FromAgent>::start::<ToAgent>(stream);
    let config = match server_config(server) {
        // In its agent the instance runs in-process: the agent is its isolation.
        Ok(config) => ServerConfig {
            isolation: Isolation::None,
            ..config
        },
        Err(error) => {
            link.send(FromAgent::Failed { error }).await;
            return wait_for_hang_up(&mut incoming).await;
        }
    };
    let (types, routes) = builder.into_parts();
    let directory = Arc::new(Directory::new(routes));
    let local = Arc::new(Instance::new(config, types.clone(), Arc::downgrade(&directory)));
    local.hand_over(listeners);
    let mut proxies = Vec::new();
    mirror(&directory, &local, &mut proxies, peers, &types, &link);
    if let Err(e) = local.start().await {
        link.send(FromAgent::Failed { error: e.0 }).await;
        return wait_for_hang_up(&mut incoming).await;
    }
    link.send(FromAgent::Ready {
        listeners: local.info().listeners,
    })
    .await;
    tokio::spawn(report_stats(local.clone(), link.clone()));
    while let Some(message) = incoming.recv().await {
        match message {
            ToAgent::Request { id, request } => {
                let (local, link) = (local.clone(), link.clone());
                tokio::spawn(async move {
                    let reply = answer(&local, request).await;
                    link.send(FromAgent::Reply { id, reply }).await;
                });
            }
            ToAgent::Peers { peers } => mirror(&directory, &local, &mut proxies, peers, &types, &link),
            ToAgent::Init { .. } | ToAgent::Reply { .. } => {}
        }
    }
    // The host hung up (or died): nothing is left to serve for.
}

async fn wait_for_hang_up(incoming: &mut tokio::sync::mpsc::Receiver<ToAgent>) {
    while incoming.recv().await.is_some() {}
}

/// Makes the agent's directory: its own instance and a proxy of every other instance of the
/// host, in the host's order (the dispatcher indexes it), mirroring the host's view;
/// operations on a proxy go through the host.
fn mirror(
    directory: &Directory,
    local: &Arc<Instance>,
    proxies: &mut Vec<Arc<Instance>>,
    peers: Vec<Peer>,
    types: &crate::service::ServerTypes,
    link: &Arc<Link<FromAgent>>,
) {
    let mut ordered = Vec::with_capacity(peers.len());
    let mut next = Vec::with_capacity(peers.len());
    for peer in peers {
        // Its own place in the host's order is taken by the instance itself.
        if peer.info.name == local.name() {
            ordered.push(local.clone());
            continue;
        }
        let Ok(config) = server_config(peer.config) else {
            continue;
        };
        let proxy = match proxies.iter().find(|p| p.name() == config.name) {
            Some(proxy) => proxy.clone(),
            None => Arc::new(Instance::new(config, types.clone(), local.directory_handle())),
        };
        proxy.mirror(&peer.info, Live::Remote(link.clone()));
        ordered.push(proxy.clone());
        next.push(proxy);
    }
    *proxies = next;
    directory.replace(ordered);
}

/// Sends the instance's counters to the host a few times a second.
async fn report_stats(local: Arc<Instance>, link: Arc<Link<FromAgent>>) {
    let mut every = tokio::time::interval(STATS_EVERY);
    loop {
        every.tick().await;
        let stats = local.stats();
        let report = AgentStats {
            sessions: stats.sessions.load(Ordering::Relaxed),
            total_sessions: stats.total_sessions.load(Ordering::Relaxed),
            rejected: stats.rejected.load(Ordering::Relaxed),
            total_packages: stats.total_packages.load(Ordering::Relaxed),
            bytes_in: stats.bytes_in.load(Ordering::Relaxed),
            bytes_out: stats.bytes_out.load(Ordering::Relaxed),
        };
        if !link.send(FromAgent::Stats(report)).await {
            return;
        }
    }
}

/// Answers one request of the host.
async fn answer(local: &Arc<Instance>, request: AgentRequest) -> Reply {
    match request {
        AgentRequest::Sessions { limit } => Ok(serde_json::to_value(local.sessions(limit).await).unwrap_or_default()),
        AgentRequest::Send { session, base64 } => channel::send(local, &session, &base64).await,
        AgentRequest::Broadcast { base64 } => channel::broadcast(local, &base64).await,
        AgentRequest::Kick { session } => {
            let id: SessionId = session.parse().map_err(|_| Failure::NoSession)?;
            Ok(local.kick(id).await.into())
        }
        AgentRequest::Call { request } => channel::call(local, request).await,
        AgentRequest::Stop { timeout_ms } => {
            local.stop(Duration::from_millis(timeout_ms)).await;
            Ok(serde_json::Value::Null)
        }
    }
}
