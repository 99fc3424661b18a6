//! A run of an instance inside this process (isolation `none` or `runtime`): its listeners'
//! accept loops and its sessions, on the host's runtime or on one of its own.

use std::sync::Arc;
use std::time::Duration;

use supersocket_proto::{Isolation, ListenerInfo};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::AcceptLoop;
use super::{Instance, InstanceContext, Live, listener};
use crate::dispatch::HostHandle;

/// The handles of a run in this process.
pub(super) struct LocalRun {
    listen: CancellationToken,
    drain: CancellationToken,
    hard: CancellationToken,
    accept_loops: Vec<JoinHandle<()>>,
    sessions: TaskTracker,
    /// The runtime of its own under isolation `runtime`.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Makes the service, binds (or takes over) the listeners and starts accepting.
pub(super) fn launch(instance: &Instance) -> Result<(LocalRun, Live, Vec<ListenerInfo>), String> {
    let config = instance.config();
    let service = instance.types.make(&config)?;
    let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let listeners = match instance.take_handed_over() {
        Some(listeners) => listeners,
        None => listener::bind_all(&config)?,
    };
    let runtime = match config.isolation {
        Isolation::Runtime => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.threads)
                .thread_name(format!("ss-{}", instance.name))
                .enable_all()
                .build()
                .map_err(|e| format!("cannot create the runtime of {}: {e}", instance.name))?,
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
    let context = Arc::new(InstanceContext {
        name: instance.name.clone(),
        config: config.clone(),
        sessions: instance.sessions.clone(),
        stats: instance.stats.clone(),
        host: HostHandle(instance.directory.clone()),
        tasks: sessions.clone(),
        stopping: drain.clone(),
        runtime: handle.clone(),
    });
    context.spawn(crate::session::sweeper::run(
        context.sessions.clone(),
        config.idle_timeout,
    ));
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
            instance: context.clone(),
            listen: listen.clone(),
            drain: drain.clone(),
            hard: hard.clone(),
            sessions: sessions.clone(),
        };
        accept_loops.push(handle.spawn(accept.run()));
    }
    let run = LocalRun {
        listen,
        drain,
        hard,
        accept_loops,
        sessions,
        runtime,
    };
    Ok((run, Live::Local { service, context }, infos))
}

impl LocalRun {
    /// Closes the listeners, lets sessions drain for at most `timeout`, then closes the rest.
    pub(super) async fn stop(self, timeout: Duration) {
        self.listen.cancel();
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        self.drain.cancel();
        self.sessions.close();
        if tokio::time::timeout(timeout, self.sessions.wait()).await.is_err() {
            self.hard.cancel();
            self.sessions.wait().await;
        }
        if let Some(runtime) = self.runtime {
            runtime.shutdown_background();
        }
    }
}
