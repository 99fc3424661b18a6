//! The per-connection loop: read, decode every package, hand each to the service, write all
//! replies of that read at once; write replies that waited for an outcome as they settle, in
//! their order; meanwhile deliver the outbox and its requests (close, release buffers), and on
//! stop drain gracefully (handle what was sent, flush, FIN, wait for the peer to close).
//!
//! Steady state allocates nothing per package: a session reads into a buffer its worker thread
//! lends it ([`buffers`](crate::session::buffers); packages are split off it and hand it back when
//! dropped) and gathers replies in another; both go back to the worker as soon as they are
//! empty, so an idle session holds none. Only the bytes of a package not complete yet stay
//! with the session. Sessions hold no timer: the instance's [sweeper](super::sweeper) closes
//! idle ones and asks quiet ones to shrink what they keep to its exact size.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;

use super::steps::Step;
use crate::context::{InstanceContext, Replies, Session, SessionState};
use crate::filter::FilterError;
use crate::outcome::BoxFuture;
use crate::service::Service;
use crate::session::buffers::Buffer;
use crate::session::{CloseReason, SessionEntry};

/// Bound on a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its connection a stop waits for the first bytes of a peer that has sent
/// none yet.
const FIRST_BYTES_GRACE: Duration = Duration::from_millis(100);
/// Bound on the polite close (TLS close_notify, FIN) of a session closed by its own side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An accepted connection, before any TLS handshake.
pub(crate) enum Connection {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TCP that must complete a TLS handshake first.
    Tls(TlsAcceptor, TcpStream),
}

/// Everything a session task needs besides its socket.
pub(crate) struct SessionSetup {
    /// The instance it belongs to.
    pub instance: Arc<InstanceContext>,
    /// Its registry entry.
    pub entry: Arc<SessionEntry>,
    /// Cancelled when the stop's timeout passes: close at once.
    pub hard: CancellationToken,
}

/// Runs a connection to its end, then unregisters it and tells the service why it closed.
/// Each kind of connection has a future of its own: plain sessions do not carry the size of
/// rustls' state, nor the connection they were handed and a copy of its stream.
pub(crate) fn serve<S: Service, D: std::ops::Deref<Target = S> + Send + 'static>(
    service: D,
    connection: Connection,
    setup: SessionSetup,
) -> BoxFuture<'static, ()> {
    match connection {
        Connection::Tcp(stream) => Box::pin(serve_tcp(service, stream, setup)),
        // rustls' state is large: boxed apart, only while the session runs.
        Connection::Tls(acceptor, stream) => Box::pin(serve_tls(service, acceptor, stream, setup)),
    }
}

// Not `async fn`s: those copy their arguments into the future's body, and every session
// would hold its stream and setup twice.
#[allow(clippy::manual_async_fn)]
fn serve_tcp<S: Service>(
    service: impl std::ops::Deref<Target = S> + Send,
    mut stream: TcpStream,
    setup: SessionSetup,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut state: SessionState = None;
        let reason = catch_panic(pin!(Driver::new(&*service, &mut stream, &setup, &mut state).run())).await;
        // The peer sees the end now, not after the `closed` handler.
        drop(stream);
        Step::new(end(
            &*service,
            &setup,
            &mut state,
            reason.unwrap_or(CloseReason::ApplicationError),
        ))
        .await;
    }
}

#[allow(clippy::manual_async_fn)]
fn serve_tls<S: Service>(
    service: impl std::ops::Deref<Target = S> + Send,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    setup: SessionSetup,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut state: SessionState = None;
        let reason = catch_panic(pin!(run_tls(&*service, acceptor, stream, &setup, &mut state))).await;
        end(
            &*service,
            &setup,
            &mut state,
            reason.unwrap_or(CloseReason::ApplicationError),
        )
        .await;
    }
}

/// Unregisters an ended session and tells the service why it closed.
async fn end<S: Service>(service: &S, setup: &SessionSetup, state: &mut SessionState, reason: CloseReason) {
    let entry = &setup.entry;
    setup.instance.sessions.remove(entry.id);
    // Senders still waiting for room learn that the session is gone.
    entry.outbox.close(reason);
    setup.instance.stats.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(
        server = %setup.instance.name, session = %entry.id, remote = %entry.remote, %reason,
        "session closed"
    );
    let (mut replies, mut close) = (Replies::default(), None);
    let mut session = Session {
        entry,
        instance: &setup.instance,
        replies: &mut replies,
        close: &mut close,
        state,
    };
    if catch_panic(pin!(service.closed(&mut session, reason))).await.is_none() {
        tracing::error!(server = %setup.instance.name, session = %entry.id, "closed handler panicked");
    }
}

/// A TLS session: the handshake (bounded, by the idle timeout when that is shorter: a
/// handshake holds a `max_connections` slot), then the same loop as plain TCP.
async fn run_tls<S: Service>(
    service: &S,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    setup: &SessionSetup,
    state: &mut SessionState,
) -> CloseReason {
    let bound = setup
        .instance
        .config()
        .idle_timeout
        .map_or(HANDSHAKE_TIMEOUT, |idle| idle.min(HANDSHAKE_TIMEOUT));
    let handshake = tokio::time::timeout(bound, acceptor.accept(stream));
    tokio::select! {
        biased;
        // A stop lets a handshake under way finish (a connection taken from the backlog drains
        // like any other), within its own bound and the stop's deadline.
        () = setup.hard.cancelled() => CloseReason::ServerShutdown,
        result = handshake => match result {
            Ok(Ok(mut tls)) => Driver::new(service, &mut tls, setup, state).run().await,
            Ok(Err(e)) => {
                tracing::debug!(session = %setup.entry.id, "TLS handshake failed: {e}");
                CloseReason::SocketError
            }
            Err(_) => CloseReason::Timeout,
        },
    }
}

/// Polls `future` (pinned where it was made, so it is not copied), turning a panic inside it
/// into `None` (the panic hook has logged it).
async fn catch_panic<F: Future>(mut future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    poll_fn(
        move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        },
    )
    .await
}

struct Driver<'a, S: Service, IO> {
    service: &'a S,
    io: &'a mut IO,
    filter: S::Filter,
    setup: &'a SessionSetup,
    /// Bytes read and not yet decoded.
    rbuf: Buffer,
    /// Replies and outbox messages not yet written (`replies.now`), and replies waiting for
    /// an outcome.
    replies: Replies,
    /// Outbox messages taken while a handler was waiting; written before `out`.
    side: Buffer,
    /// Set by a handler (or the filter) to close after the pending writes.
    close: Option<CloseReason>,
    /// The server type's own state of this session.
    state: &'a mut SessionState,
}

/// A session's transport: a byte stream that can also say whether the kernel holds bytes not
/// read yet (so a drain does not stop early).
trait SessionIo: AsyncRead + AsyncWrite + Unpin + Send {
    fn has_pending_bytes(&self) -> bool;
}

impl SessionIo for TcpStream {
    fn has_pending_bytes(&self) -> bool {
        kernel_has_bytes(self)
    }
}

impl SessionIo for TlsStream<TcpStream> {
    fn has_pending_bytes(&self) -> bool {
        kernel_has_bytes(self.get_ref().0)
    }
}

/// Asks the socket itself (a non-blocking peek) whether a read would return something: bytes,
/// an end of stream or an error.
fn kernel_has_bytes(stream: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(stream).peek(&mut probe) {
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        Ok(_) => true,
    }
}

impl<'a, S, IO> Driver<'a, S, IO>
where
    S: Service,
    IO: SessionIo,
{
    fn new(service: &'a S, io: &'a mut IO, setup: &'a SessionSetup, state: &'a mut SessionState) -> Self {
        Self {
            service,
            io,
            // A session keeps the bound it opened with; a change applies to the next ones.
            filter: service.filter(setup.instance.config().max_package_length),
            setup,
            rbuf: Buffer::default(),
            replies: Replies::default(),
            side: Buffer::default(),
            close: None,
            state,
        }
    }

    async fn run(&mut self) -> CloseReason {
        let entry = &self.setup.entry;
        Step::new(self.connected()).await;
        // Every step runs in a block its worker lends (see `steps`): the session's future keeps
        // only the wait between steps, which is what every idle session holds.
        if let Err(reason) = Step::new(self.flush()).await {
            return reason;
        }
        if let Some(reason) = self.close {
            return Step::new(self.close_politely(reason)).await;
        }
        self.give_back_buffers();
        loop {
            let result = match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Drain => return Step::new(self.drain()).await,
                Event::Outbox => Step::new(self.deliver_outbox()).await,
                Event::Settled => Step::new(self.on_settled()).await,
                Event::Read(Ok(0)) => return Step::new(self.on_peer_closed()).await,
                Event::Read(Ok(n)) => Step::new(self.on_read(n)).await,
                Event::Read(Err(_)) => return CloseReason::SocketError,
            };
            self.give_back_buffers();
            match result.and_then(|()| self.close.map_or(Ok(()), Err)) {
                Ok(()) if self.holds_buffers() => entry.outbox.note_buffers_held(),
                Ok(()) => {}
                Err(CloseReason::LocalClosing) => {
                    return Step::new(self.close_politely(CloseReason::LocalClosing)).await;
                }
                Err(reason) => return reason,
            }
        }
    }

    async fn connected(&mut self) {
        let mut session = Session {
            entry: &self.setup.entry,
            instance: &self.setup.instance,
            replies: &mut self.replies,
            close: &mut self.close,
            state: self.state,
        };
        self.service.connected(&mut session).await;
    }

    /// What the session does next, looked at in this order: a stop, its outbox, a reply that
    /// settled, bytes from the peer (unless too many replies wait). One poll of a few
    /// references, not a future per source: this wait is all an idle session holds.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // The stop wakes every session through its outbox once the token is cancelled.
        // What the outbox holds, not only whether it signalled: a step that waited on it
        // (a write, a waiting handler) may have taken the signal of a stop or a close request.
        let outbox = &self.setup.entry.outbox;
        if outbox.stopping() {
            return Poll::Ready(Event::Drain);
        }
        if outbox.poll_wait(cx).is_ready() || outbox.has_work() {
            return Poll::Ready(Event::Outbox);
        }
        if self.replies.waiting() && self.replies.poll_settled(cx).is_ready() {
            return Poll::Ready(Event::Settled);
        }
        if !self.replies.full()
            && let Poll::Ready(read) = poll_read_some(&mut *self.io, &mut self.rbuf, cx)
        {
            return Poll::Ready(Event::Read(read));
        }
        Poll::Pending
    }

    fn holds_buffers(&self) -> bool {
        self.rbuf.held() || self.replies.now.held() || self.side.held()
    }

    /// Gives the worker back the buffers that hold nothing.
    fn give_back_buffers(&mut self) {
        self.rbuf.give_back();
        self.replies.now.give_back();
        self.side.give_back();
    }

    /// Keeps only exact copies of what the buffers hold (a package not complete yet, replies
    /// the peer has not taken), and gives the rest back.
    fn release_buffers(&mut self) {
        self.rbuf.shrink();
        self.replies.now.shrink();
        self.side.shrink();
    }

    /// Decodes and handles every complete package read so far, then writes the replies.
    async fn on_read(&mut self, n: usize) -> Result<(), CloseReason> {
        let setup = self.setup;
        let entry = &setup.entry;
        entry.touch();
        entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        setup.instance.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let result = self.handle_packages().await;
        self.flush().await?;
        result
    }

    async fn handle_packages(&mut self) -> Result<(), CloseReason> {
        let setup = self.setup;
        let mut packages = 0u64;
        let result = loop {
            match self.filter.decode(self.rbuf.get()) {
                Ok(Some(package)) => {
                    packages += 1;
                    let mut session = Session {
                        entry: &setup.entry,
                        instance: &setup.instance,
                        replies: &mut self.replies,
                        close: &mut self.close,
                        state: self.state,
                    };
                    let handled = {
                        let handler = pin!(self.service.received(&mut session, package));
                        keep_outbox_moving(handler, &mut *self.io, &mut self.side, setup).await
                    };
                    if let Err(reason) = handled {
                        break Err(reason);
                    }
                    // With too many replies waiting, the rest waits in `rbuf` until they settle.
                    if self.close.is_some() || self.replies.full() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    tracing::debug!(server = %setup.instance.name, session = %setup.entry.id, "protocol error: {e}");
                    // Drop what cannot be decoded; it must not be kept in memory.
                    self.rbuf.discard();
                    break Err(match e {
                        FilterError::Io(_) => CloseReason::SocketError,
                        _ => CloseReason::ProtocolError,
                    });
                }
            }
        };
        setup
            .instance
            .stats
            .total_packages
            .fetch_add(packages, Ordering::Relaxed);
        result
    }

    /// Writes the replies that settled; then handles the packages that waited for them.
    async fn on_settled(&mut self) -> Result<(), CloseReason> {
        self.flush().await?;
        if self.rbuf.is_empty() || self.replies.full() {
            return Ok(());
        }
        let result = self.handle_packages().await;
        self.flush().await?;
        result
    }

    /// Writes every queued outbox message in one go; honours a close request after that.
    async fn deliver_outbox(&mut self) -> Result<(), CloseReason> {
        let outbox = &self.setup.entry.outbox;
        if outbox.take_release() {
            self.release_buffers();
        }
        outbox.drain_into(self.replies.now.get());
        match outbox.close_requested() {
            // A slow reader is closed without writing more to it.
            Some(CloseReason::Timeout) => Err(CloseReason::Timeout),
            Some(reason) => {
                self.flush().await?;
                Err(reason)
            }
            None => self.flush().await,
        }
    }

    /// Writes `side` and the replies ready completely, unless the stop's deadline passes or a
    /// close is requested meanwhile (a peer that stops reading is closed by the idle timeout).
    async fn flush(&mut self) -> Result<(), CloseReason> {
        let setup = self.setup;
        write_all(&mut *self.io, &mut self.side, setup).await?;
        write_all(&mut *self.io, &mut self.replies.now, setup).await?;
        // TLS takes what is written into its own buffer at once: the wait for a peer that does
        // not read is here.
        let outbox = &setup.entry.outbox;
        let flushed = loop {
            if let Some(flushed) = at_once(self.io.flush()).await {
                break flushed;
            }
            tokio::select! {
                biased;
                () = setup.hard.cancelled() => return Err(CloseReason::ServerShutdown),
                flushed = self.io.flush() => break flushed,
                () = outbox.wait() => if let Some(reason) = outbox.close_requested() {
                    return Err(reason);
                },
            }
        };
        flushed.map_err(|_| CloseReason::SocketError)
    }

    /// Closes from this side: TLS close_notify and FIN, briefly bounded.
    async fn close_politely(&mut self, reason: CloseReason) -> CloseReason {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
        reason
    }

    /// The peer closed its side: it may still read, so the replies it is owed (those that wait
    /// for an outcome, and those of packages that waited for them) are written before the
    /// session ends.
    async fn on_peer_closed(&mut self) -> CloseReason {
        if self.settle_all().await.is_ok() {
            let _ = self.flush().await;
        }
        CloseReason::RemoteClosing
    }

    /// Writes replies as they settle, and handles the packages that waited for them, until no
    /// reply waits (or the stop's deadline passes).
    async fn settle_all(&mut self) -> Result<(), CloseReason> {
        while self.replies.waiting() {
            tokio::select! {
                biased;
                () = self.setup.hard.cancelled() => return Err(CloseReason::ServerShutdown),
                () = poll_fn(|cx| self.replies.poll_settled(cx)) => self.on_settled().await?,
            }
        }
        Ok(())
    }

    /// Graceful stop: handle what the peer already sent, write everything queued, half-close,
    /// and wait for the peer to close, until the stop's deadline.
    async fn drain(&mut self) -> CloseReason {
        let hard = &self.setup.hard;
        let mut peer_closed = false;
        let mut waited_for_first_bytes = false;
        // Read until the socket would block — as the kernel sees it: tokio's readiness can lag
        // behind bytes that have already arrived.
        loop {
            // A peer that keeps sending and reading never makes a step wait: the deadline is
            // looked at here too.
            if hard.is_cancelled() {
                return CloseReason::ServerShutdown;
            }
            let read = match read_now(&mut *self.io, &mut self.rbuf).await {
                Some(read) => read,
                None if !self.io.has_pending_bytes() => {
                    // A peer that connected as the stop began (taken from the backlog) may not
                    // have sent its request yet: it gets a moment to.
                    let entry = &self.setup.entry;
                    let silent = entry.bytes_in.load(Ordering::Relaxed) == 0;
                    let grace = FIRST_BYTES_GRACE.saturating_sub(entry.age());
                    if !silent || grace.is_zero() || waited_for_first_bytes {
                        break;
                    }
                    waited_for_first_bytes = true;
                    let first = tokio::time::timeout(grace, read_some(&mut *self.io, &mut self.rbuf));
                    tokio::select! {
                        biased;
                        () = hard.cancelled() => return CloseReason::ServerShutdown,
                        read = first => match read {
                            Ok(read) => read,
                            Err(_) => break,
                        },
                    }
                }
                None => tokio::select! {
                    biased;
                    () = hard.cancelled() => return CloseReason::ServerShutdown,
                    read = read_some(&mut *self.io, &mut self.rbuf) => read,
                },
            };
            match read {
                Ok(0) => {
                    peer_closed = true;
                    break;
                }
                Ok(n) => {
                    let handled = self.on_read(n).await;
                    if handled.and(self.settle_all().await).is_err() || self.close.is_some() {
                        break;
                    }
                }
                Err(_) => return CloseReason::SocketError,
            }
        }
        if let Err(reason) = self.settle_all().await {
            return reason;
        }
        // Every handler is done: what is queued now is the last the peer gets, and senders
        // from now on are refused rather than accepted and dropped.
        let outbox = &self.setup.entry.outbox;
        outbox.seal();
        outbox.drain_into(self.replies.now.get());
        if let Err(reason) = self.flush().await {
            return reason;
        }
        tokio::select! {
            biased;
            () = hard.cancelled() => return CloseReason::ServerShutdown,
            _ = self.io.shutdown() => {}
        }
        // Wait for the peer's FIN, discarding what it still sends: closing with unread bytes
        // would make the kernel send a reset that can destroy replies in flight.
        while !peer_closed {
            self.rbuf.clear();
            tokio::select! {
                biased;
                () = hard.cancelled() => break,
                read = read_some(&mut *self.io, &mut self.rbuf) => peer_closed = !matches!(read, Ok(n) if n > 0),
            }
        }
        CloseReason::ServerShutdown
    }
}

/// What wakes a session between steps.
enum Event {
    /// The instance stops: drain.
    Drain,
    /// A message or a request in the outbox.
    Outbox,
    /// Replies that waited for an outcome settled.
    Settled,
    /// A read from the peer.
    Read(std::io::Result<usize>),
}

/// Counts bytes written to the peer.
fn count_out(setup: &SessionSetup, n: usize) {
    setup.entry.touch();
    setup.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    setup.instance.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
}

/// Writes `buffer` completely, unless the stop's deadline passes or a close is requested (by
/// the idle sweeper, a kick) while the peer is not reading.
async fn write_all<IO: SessionIo>(io: &mut IO, buffer: &mut Buffer, setup: &SessionSetup) -> Result<(), CloseReason> {
    let outbox = &setup.entry.outbox;
    while !buffer.is_empty() {
        // Most writes go through at once. Only one that would block also waits on the stop's
        // deadline and the outbox: waiting on the deadline locks what every session shares.
        let written = match at_once(io.write_buf(buffer.get())).await {
            Some(written) => written,
            None => tokio::select! {
                biased;
                () = setup.hard.cancelled() => return Err(CloseReason::ServerShutdown),
                written = io.write_buf(buffer.get()) => written,
                // A wake-up for anything else (a message, a release) is the session loop's: it
                // looks at what the outbox holds after this step.
                () = outbox.wait() => match outbox.close_requested() {
                    Some(reason) => return Err(reason),
                    None => continue,
                },
            },
        };
        match written {
            Ok(0) | Err(_) => return Err(CloseReason::SocketError),
            Ok(n) => count_out(setup, n),
        }
    }
    Ok(())
}

/// The output of `future` if it is ready when first polled (else it is dropped, its waker
/// registered as any poll does).
async fn at_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Most outbox bytes taken aside while a handler waits; beyond it the queue fills and its
/// senders feel the backpressure.
const SIDE_LIMIT: usize = 64 * 1024;

/// Runs a handler to its end while keeping this session's outbox moving to the peer: a handler
/// may wait on something (a call, room in another session's queue) that itself waits on this
/// session's queue, and that must not deadlock. A handler still waiting when the stop's
/// deadline passes is dropped; a socket that failed meanwhile closes the session once the
/// handler is done.
async fn keep_outbox_moving<IO: SessionIo>(
    mut handler: std::pin::Pin<&mut impl Future<Output = ()>>,
    io: &mut IO,
    side: &mut Buffer,
    setup: &SessionSetup,
) -> Result<(), CloseReason> {
    // Most handlers finish without waiting: nothing to keep moving.
    if at_once(handler.as_mut()).await.is_some() {
        return Ok(());
    }
    let outbox = &setup.entry.outbox;
    let mut failed = false;
    loop {
        tokio::select! {
            biased;
            () = &mut handler => return if failed { Err(CloseReason::SocketError) } else { Ok(()) },
            () = setup.hard.cancelled() => return Err(CloseReason::ServerShutdown),
            () = outbox.wait(), if side.len() < SIDE_LIMIT => {
                outbox.drain_into(side.get());
            }
            // An async block: a branch's future is made even when the branch is off, and
            // `side.get()` would borrow a buffer for nothing.
            written = async { io.write_buf(side.get()).await }, if !side.is_empty() && !failed => match written {
                Ok(n) if n > 0 => count_out(setup, n),
                _ => failed = true,
            },
        }
    }
}

/// Reads once into `buf`; a session without a buffer borrows one for the read and gives it
/// back if nothing came.
async fn read_some<IO: SessionIo>(io: &mut IO, buf: &mut Buffer) -> std::io::Result<usize> {
    poll_fn(|cx| poll_read_some(io, buf, cx)).await
}

fn poll_read_some<IO: SessionIo>(io: &mut IO, buf: &mut Buffer, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if buf.has_room() {
        return poll_read_buf(std::pin::Pin::new(&mut *io), cx, buf.with_room());
    }
    // No buffer, or one kept at the exact size of a package begun: read into a borrowed one, so
    // that a session that waits holds no more than it did.
    let mut scratch = Buffer::default();
    let read = poll_read_buf(std::pin::Pin::new(&mut *io), cx, scratch.get());
    buf.append(&mut scratch);
    scratch.give_back();
    read
}

/// Reads what is already there, or `None` if the read would block.
async fn read_now<IO: SessionIo>(io: &mut IO, buf: &mut Buffer) -> Option<std::io::Result<usize>> {
    let buf = buf.with_room();
    at_once(poll_fn(|cx| poll_read_buf(std::pin::Pin::new(&mut *io), cx, buf))).await
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::context::Session;
    use crate::filter::PassthroughFilter;
    use crate::service::Service;

    /// The size of the future a closure would make, without making it.
    fn future_size<F: FnOnce() -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// The plainest server type: it sends back what arrives.
    struct Echo;

    impl Service for Echo {
        type Filter = PassthroughFilter;

        fn filter(&self, _: usize) -> PassthroughFilter {
            PassthroughFilter
        }

        async fn received(&self, session: &mut Session<'_>, package: BytesMut) {
            session.reply(&package);
        }
    }

    /// Every open session holds one such future: with its session's shared record and tokio's
    /// task and I/O registration, it is an idle session's memory. Only the wait between steps
    /// is in it: the steps run in blocks the worker lends, TLS is boxed apart, and no session
    /// holds a timer or a prepared searcher.
    #[test]
    #[allow(unreachable_code)]
    fn an_idle_session_stays_small() {
        let echo = future_size(|| super::serve_tcp(&Echo, unreachable!(), unreachable!()));
        assert!(echo <= 256, "a plain TCP session's future is {echo} bytes");
        let command = crate::services::CommandService::default();
        let lines = future_size(|| super::serve_tcp(&command, unreachable!(), unreachable!()));
        assert!(lines <= 288, "a line protocol's session future is {lines} bytes");
        let entry = std::mem::size_of::<crate::session::SessionEntry>();
        assert!(entry <= 232, "a session's shared record is {entry} bytes");
    }
}
