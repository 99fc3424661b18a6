//! The accept loop of one listener: enforces `max_connections`, sets TCP_NODELAY and
//! SO_OOBINLINE, registers the session and spawns its task; backs off when the process is out of descriptors.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InstanceContext;
use crate::service::ErasedService;
use crate::session::{CloseReason, Connection, SessionSetup, SessionShared};

/// What an accept loop needs to spawn sessions.
pub(crate) struct AcceptLoop {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub service: Arc<dyn ErasedService>,
    pub instance: Arc<InstanceContext>,
    /// Cancelled to close the listener.
    pub listen: CancellationToken,
    /// Handed to sessions: drain gracefully.
    pub drain: CancellationToken,
    /// Handed to sessions: close at once.
    pub hard: CancellationToken,
    /// Tracks the session tasks so a stop can wait for them.
    pub sessions: TaskTracker,
}

impl AcceptLoop {
    /// Accepts until `listen` is cancelled; the listener closes when this returns.
    pub(crate) async fn run(self) {
        let stats = &self.instance.stats;
        let max = self.instance.config.max_connections as u64;
        let mut backoff = Duration::from_millis(1);
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.listen.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(1);
                    pair
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(server = %self.instance.name, "accept failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        () = self.listen.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(_) => continue,
            };
            if stats.sessions.fetch_add(1, Ordering::AcqRel) >= max {
                stats.sessions.fetch_sub(1, Ordering::AcqRel);
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(server = %self.instance.name, %remote, reason = %CloseReason::Rejected, "session closed");
                continue;
            }
            stats.total_sessions.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            // Urgent bytes stay in the stream: FTP clients send ABOR as urgent data, and a
            // byte taken out of band would cut a line short.
            let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
            let local = stream.local_addr().unwrap_or_else(|_| self.instance_addr());
            let shared = Arc::new(SessionShared::new(remote, local, self.instance.config.send_queue));
            self.instance.sessions.insert(shared.clone());
            let connection = match &self.tls {
                Some(tls) => Connection::Tls(tls.clone(), stream),
                None => Connection::Tcp(stream),
            };
            let setup = SessionSetup {
                instance: self.instance.clone(),
                shared,
                drain: self.drain.clone(),
                hard: self.hard.clone(),
            };
            self.sessions.spawn(self.service.clone().serve(connection, setup));
        }
    }

    fn instance_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }
}

/// Errors that say the process or the system is out of a resource: retrying at once would spin.
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}
