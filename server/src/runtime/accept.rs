//! The accept loop of one listener: enforces `max_connections`, sets TCP_NODELAY and
//! SO_OOBINLINE, registers the session and spawns its task; backs off when the process is out
//! of descriptors.
//!
//! When its listener closes (at a stop, or a live change that drops the listener) it takes
//! every connection the kernel has already queued, so none of them is reset: it first has the kernel drop new connection requests (a
//! socket filter that drops SYN segments: their clients retry, and find the port closed), lets
//! the handshakes under way complete, then accepts until the queue is empty.

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
    /// Shared with the run, which may change its backlog; it closes when both let go.
    pub listener: Arc<TcpListener>,
    /// Cancelled to close the listener.
    pub listen: CancellationToken,
    /// A socket systemd passed: it outlives this loop (and the host), so the connections
    /// queued in it are left there for the next one to serve.
    pub passed: bool,
    pub admission: Admission,
}

/// What an accept loop needs to spawn sessions.
pub(crate) struct Admission {
    pub tls: Option<TlsAcceptor>,
    pub service: Arc<dyn ErasedService>,
    pub instance: Arc<InstanceContext>,
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
                () = self.listen.cancelled() => return self.take_backlog().await,
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
                        () = self.listen.cancelled() => return self.take_backlog().await,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(_) => {}
            }
        }
    }

    /// Takes every connection the kernel has already accepted for us, and those whose
    /// handshake is under way; they are served like any session (at a stop they drain: each
    /// handles what its peer sent, flushes and closes). A passed socket keeps them.
    async fn take_backlog(self) {
        if self.passed {
            return;
        }
        if let Err(e) = refuse_new_connections(&self.listener) {
            tracing::debug!(server = %self.admission.instance.name, "cannot filter new connections: {e}");
        }
        self.admit_queued();
        tokio::time::sleep(HANDSHAKES_UNDER_WAY).await;
        self.admit_queued();
    }

    /// Accepts every connection in the queue now.
    fn admit_queued(&self) {
        loop {
            // Straight on the (non-blocking) socket: it answers WouldBlock once the queue is
            // empty, whatever the reactor last saw.
            let accepted = socket2::SockRef::from(&self.listener).accept();
            let Ok((socket, remote)) = accepted else { break };
            let Some(remote) = remote.as_socket() else { break };
            let stream = std::net::TcpStream::from(socket);
            let _ = stream.set_nonblocking(true);
            match TcpStream::from_std(stream) {
                Ok(stream) => self.admission.admit(stream, remote),
                Err(_) => break,
            }
        }
    }
}

/// How long a closing listener waits for handshakes under way to complete
/// (loopback and a LAN take well under a millisecond).
const HANDSHAKES_UNDER_WAY: Duration = Duration::from_millis(20);

/// Has the kernel drop the SYN segments that reach `listener` from now on (a classic BPF socket
/// filter: the TCP header's flags at offset 13, SYN = 0x02), while the segments that complete
/// handshakes already begun still pass.
fn refuse_new_connections(listener: &TcpListener) -> std::io::Result<()> {
    use nix::libc::{SO_ATTACH_FILTER, SOL_SOCKET, setsockopt, sock_filter, sock_fprog};
    use std::os::fd::AsRawFd;
    let program = [
        // ldb [13]: the flags byte of the TCP header
        sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 13,
        },
        // jset #SYN: a SYN goes to the next instruction, anything else skips it
        sock_filter {
            code: 0x45,
            jt: 0,
            jf: 1,
            k: 0x02,
        },
        // ret #0: drop
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // ret #-1: keep the whole segment
        sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let filter = sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `filter` points at `program`, both alive across the call; the kernel copies the
    // program before it returns.
    let set = unsafe {
        setsockopt(
            listener.as_raw_fd(),
            SOL_SOCKET,
            SO_ATTACH_FILTER,
            std::ptr::from_ref(&filter).cast(),
            std::mem::size_of::<sock_fprog>() as nix::libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Admission {
    /// Registers one accepted connection and spawns its session, or closes it at once over
    /// `max_connections`.
    fn admit(&self, stream: TcpStream, remote: SocketAddr) {
        let (instance, accept) = (&self.instance, self);
        let stats = &instance.stats;
        // The limits as they are now: a change applies from the next connection.
        let config = instance.config();
        let max = config.max_connections as u64;
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
        let limits = QueueLimits {
            messages: config.send_queue,
            bytes: config.send_queue_bytes,
        };
        let entry = Arc::new(SessionEntry::new(remote, local, limits));
        instance.sessions.insert(entry.clone());
        let connection = match &accept.tls {
            Some(tls) => Connection::Tls(tls.clone(), stream),
            None => Connection::Tcp(stream),
        };
        let setup = SessionSetup {
            instance: instance.clone(),
            entry,
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

#[cfg(test)]
mod tests {
    use std::net::TcpStream as StdTcpStream;

    use super::*;

    #[tokio::test]
    async fn once_filtered_a_listener_takes_no_new_connection_but_keeps_its_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = StdTcpStream::connect(addr).unwrap();
        refuse_new_connections(&listener).unwrap();
        // The SYN is dropped: the client's connect does not complete (it would retry in a second).
        let late = StdTcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(late.is_err(), "a connection got through the filter");
        // What was queued before is still there to be taken.
        let (taken, from) = socket2::SockRef::from(&listener).accept().unwrap();
        assert_eq!(from.as_socket(), Some(queued.local_addr().unwrap()));
        drop(taken);
    }
}
