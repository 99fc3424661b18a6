//! The accept loop of one listener: enforces `max_connections`, sets TCP_NODELAY and
//! SO_OOBINLINE, registers the session and spawns its task; backs off when the process is out
//! of descriptors. At a stop it takes every connection the kernel has already queued before the
//! listener closes, so none of them is reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::{Connection, SessionSetup};
use super::types::ErasedService;
use crate::context::InstanceContext;
use crate::session::{CloseReason, QueueLimits, SessionEntry};

/// One listener and what it takes to spawn its sessions.
pub(crate) struct AcceptLoop {
    pub listener: TcpListener,
    /// Cancelled to close the listener.
    pub listen: CancellationToken,
    pub admission: Admission,
}

/// What an accept loop needs to spawn sessions.
pub(crate) struct Admission {
    pub tls: Option<TlsAcceptor>,
    pub service: Arc<dyn ErasedService>,
    pub instance: Arc<InstanceContext>,
    /// The outbox bounds of each session.
    pub limits: QueueLimits,
    /// Handed to sessions: drain gracefully.
    pub drain: CancellationToken,
    /// Handed to sessions: close at once.
    pub hard: CancellationToken,
    /// Tracks the session tasks so a stop can wait for them.
    pub sessions: TaskTracker,
}

impl AcceptLoop {
    /// Accepts until `listen` is cancelled, then takes the backlog; the listener closes when
    /// this returns.
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(1);
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.listen.cancelled() => return self.take_backlog(),
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    backoff = Duration::from_millis(1);
                    self.admission.admit(stream, remote);
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    let server = &self.admission.instance.name;
                    tracing::warn!(%server, "accept failed: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        () = self.listen.cancelled() => return self.take_backlog(),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(_) => {}
            }
        }
    }

    /// Takes every connection the kernel has already accepted for us; they drain like any
    /// session (the stop has begun, so each handles what its peer sent, flushes and closes).
    fn take_backlog(self) {
        let Ok(listener) = self.listener.into_std() else {
            return;
        };
        // Still non-blocking: `accept` answers WouldBlock once the queue is empty.
        while let Ok((stream, remote)) = listener.accept() {
            let _ = stream.set_nonblocking(true);
            match TcpStream::from_std(stream) {
                Ok(stream) => self.admission.admit(stream, remote),
                Err(_) => break,
            }
        }
    }
}

impl Admission {
    /// Registers one accepted connection and spawns its session, or closes it at once over
    /// `max_connections`.
    fn admit(&self, stream: TcpStream, remote: SocketAddr) {
        let (instance, accept) = (&self.instance, self);
        let stats = &instance.stats;
        let max = instance.config.max_connections as u64;
        if stats.sessions.fetch_add(1, Ordering::AcqRel) >= max {
            stats.sessions.fetch_sub(1, Ordering::AcqRel);
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(server = %instance.name, %remote, reason = %CloseReason::Rejected, "session closed");
            return;
        }
        stats.total_sessions.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        // Urgent bytes stay in the stream: FTP clients send ABOR as urgent data, and a byte taken
        // out of band would cut a line short.
        let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let entry = Arc::new(SessionEntry::new(remote, local, accept.limits));
        instance.sessions.insert(entry.clone());
        let connection = match &accept.tls {
            Some(tls) => Connection::Tls(tls.clone(), stream),
            None => Connection::Tcp(stream),
        };
        let setup = SessionSetup {
            instance: instance.clone(),
            entry,
            drain: accept.drain.clone(),
            hard: accept.hard.clone(),
        };
        accept.sessions.spawn(accept.service.clone().serve(connection, setup));
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
