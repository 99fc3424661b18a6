//! Serves the admin API on its listener with limits of its own, so that no client of the admin
//! port can take what the instances or the other clients need:
//!
//! - at most `max_connections` open. When they are all taken, the quietest — one that has
//!   never sent a byte first, then the one that has gone longest without a request in flight
//!   (idle, or still sending a request's head) — is closed to make room, as nginx reuses
//!   keep-alive connections; only when every one has a request in flight is the new one closed
//!   as soon as it is accepted. So a peer that holds connections open and quiet cannot keep a
//!   probe out. Connections told to close leave within a poll; while a quarter of `max` are
//!   leaving, no more are accepted (the kernel queues them), so at most a quarter more
//!   descriptors are held;
//! - a request's headers must arrive within `header_timeout` of its first byte, and its body
//!   within as long again after them (however it trickles in); an answer the peer does not read
//!   may stall for no longer than `header_timeout`; a connection with no request in flight is
//!   closed after `idle_timeout`;
//! - the read buffer is small, so each connection holds a few KiB;
//! - at the host's end ([`serve`]'s `closing`), no connection is accepted any more, requests in
//!   flight are answered (a `stop` asked during the shutdown gets its answer), idle
//!   connections close, and `serve` returns once every connection has;
//! - every request is logged at debug level with its status and duration;
//! - hyper's own answers to requests it cannot parse (400, and 431 for a request line or
//!   headers over the buffer) carry the JSON error envelope, as every other answer does. They
//!   are found by their first bytes in one write: hyper writes a head in one piece (this
//!   stream does not take vectored writes).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{AdminListener, ApiError};
use crate::config::AdminLimits;

/// The most bytes of a request's line and headers (hyper's smallest buffer).
const MAX_HEAD: usize = 8 * 1024;
/// The most header fields in a request.
const MAX_HEADERS: usize = 64;
/// Turns the runtime gets, when the table is full, to notice connections that have ended.
const YIELDS_WHEN_FULL: usize = 2;
/// How long to wait before accepting again when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts admin connections until `closing` is cancelled, then waits for the open ones to
/// finish what they are answering and close.
pub(super) async fn serve(
    listener: AdminListener,
    router: Router,
    limits: AdminLimits,
    closing: CancellationToken,
) -> io::Result<()> {
    let table = Arc::new(Table::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // Connections wait in the kernel's queue meanwhile, the listener's backlog.
        let accepted = tokio::select! {
            () = closing.cancelled() => break,
            accepted = accept(&listener, &table) => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) if is_transient(&e) => {
                tracing::debug!("admin accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        // Under a flood, a client's request has usually arrived by the time its connection is
        // taken from the queue: it is no silent connection, and others go before it.
        let heard = match &stream {
            Accepted::Tcp(stream) => bytes_wait(stream),
            Accepted::Unix(_) => false,
        };
        // A full table may hold connections whose peers have left: the runtime gets turns to
        // notice (a yield lets the I/O driver run first) before one is closed to make room.
        for _ in 0..YIELDS_WHEN_FULL {
            if !table.full() {
                break;
            }
            tokio::task::yield_now().await;
        }
        // No room: closed at once (dropping the stream), before a byte is read.
        let Some(seat) = Table::seat(&table, heard) else {
            continue;
        };
        let closing = closing.clone();
        match stream {
            Accepted::Tcp(stream) => connections.spawn(connection(stream, router.clone(), limits, seat, closing)),
            Accepted::Unix(stream) => connections.spawn(connection(stream, router.clone(), limits, seat, closing)),
        };
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The next connection, once few are leaving.
async fn accept(listener: &AdminListener, table: &Table) -> io::Result<Accepted> {
    table.few_leaving().await;
    match listener {
        AdminListener::Tcp(tcp) => tcp.accept().await.map(|(stream, _)| Accepted::Tcp(stream)),
        AdminListener::Unix(unix, _) => unix.accept().await.map(|(stream, _)| Accepted::Unix(stream)),
    }
}

/// Whether bytes from the peer wait on `stream` (a non-blocking peek).
fn bytes_wait(stream: &tokio::net::TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
    socket2::SockRef::from(stream).peek(&mut probe).is_ok_and(|n| n > 0)
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Errors after which the listener still works: out of descriptors or memory, or a peer that
/// left before it was accepted.
fn is_transient(error: &io::Error) -> bool {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || error.raw_os_error().is_some_and(|code| {
            use nix::errno::Errno;
            [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].contains(&Errno::from_raw(code))
        })
}

/// The open connections, so that a full table can make room.
struct Table {
    max: usize,
    state: Mutex<TableState>,
    /// A connection told to close has left.
    left: Notify,
}

#[derive(Default)]
struct TableState {
    open: HashMap<u64, Arc<Watch>>,
    next: u64,
    /// Connections told to close that are still open.
    leaving: usize,
}

impl Table {
    fn new(max: usize) -> Self {
        Self {
            max,
            state: Mutex::default(),
            left: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once fewer than `max / 4` (at least one) connections told to close are still
    /// open: they leave within a poll, and until then hold descriptors beyond `max`.
    async fn few_leaving(&self) {
        let most = (self.max / 4).max(1);
        loop {
            let left = self.left.notified();
            if self.state().leaving < most {
                return;
            }
            left.await;
        }
    }

    /// Whether every place is taken.
    fn full(&self) -> bool {
        let state = self.state();
        state.open.len() - state.leaving >= self.max
    }

    /// A place for a new connection: a free one, or that of the quietest connection, which
    /// is told to close. `None` when every connection has a request in flight.
    fn seat(table: &Arc<Self>, heard: bool) -> Option<Seat> {
        let mut state = table.state();
        if state.open.len() - state.leaving >= table.max {
            let quietest = state
                .open
                .values()
                .filter_map(|watch| Some((watch.quietness()?, watch)))
                .min_by_key(|(quietness, _)| *quietness)
                .map(|(_, watch)| watch)?;
            quietest.evict();
            state.leaving += 1;
        }
        let id = state.next;
        state.next += 1;
        let watch = Arc::new(Watch::new(heard));
        state.open.insert(id, watch.clone());
        Some(Seat {
            table: table.clone(),
            id,
            watch,
        })
    }
}

/// A connection's place in the table, given back when it ends.
struct Seat {
    table: Arc<Table>,
    id: u64,
    watch: Arc<Watch>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut state = self.table.state();
        state.open.remove(&self.id);
        if self.watch.state().evicted {
            state.leaving -= 1;
            drop(state);
            self.table.left.notify_one();
        }
    }
}

/// Serves one connection until it closes, breaks a limit, idles out or makes room for another;
/// once `closing` is cancelled, until the request in flight is answered.
async fn connection<S>(stream: S, router: Router, limits: AdminLimits, seat: Seat, closing: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = seat.watch.clone();
    let io = TokioIo::new(Watched {
        inner: stream,
        watch: watch.clone(),
        answer: None,
    });
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let busy = Busy::begin(&watch);
            let router = router.clone();
            let deadline = Box::pin(tokio::time::sleep(limits.header_timeout));
            let request = request.map(|body| Body::new(Timed { body, deadline }));
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let began = Instant::now();
            async move {
                let response = match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                let (status, elapsed) = (response.status().as_u16(), began.elapsed());
                tracing::debug!(%method, path, status, ?elapsed, "admin request");
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut expired = std::pin::pin!(watch.expired(limits));
    tokio::select! {
        _ = connection.as_mut() => return,
        () = expired.as_mut() => return,
        () = closing.cancelled() => {}
    }
    // The request in flight is answered; an idle connection closes at once.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection => {}
        () = expired => {}
    }
}

/// What a connection is doing, for its timeouts.
struct Watch {
    state: Mutex<WatchState>,
    changed: Notify,
}

struct WatchState {
    /// Requests whose answer is not fully sent.
    busy: usize,
    /// Since when bytes wait to be written that the peer does not take.
    stalled_since: Option<Instant>,
    /// When the first byte of the next request's head came, while none is in flight.
    head_since: Option<Instant>,
    /// When the connection last had nothing in flight.
    idle_since: Instant,
    /// Told to close to make room for another.
    evicted: bool,
    /// Whether any byte came (or waited already when the connection was accepted).
    heard: bool,
}

impl Watch {
    fn new(heard: bool) -> Self {
        Self {
            state: Mutex::new(WatchState {
                busy: 0,
                stalled_since: None,
                head_since: None,
                idle_since: Instant::now(),
                evicted: false,
                heard,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How quiet the connection is, the quietest least: one that never sent a byte before
    /// any other, then by how long it has had no request in flight (a request still sending
    /// its head counts from the head's first byte). `None`: it has a request in flight, or it
    /// is already leaving.
    fn quietness(&self) -> Option<(bool, Instant)> {
        let state = self.state();
        (state.busy == 0 && !state.evicted).then(|| (state.heard, state.head_since.unwrap_or(state.idle_since)))
    }

    /// Tells the connection to close.
    fn evict(&self) {
        self.state().evicted = true;
        self.changed.notify_one();
    }

    /// A write could not go out (`true`), or went out.
    fn write_stalled(&self, stalled: bool) {
        let mut state = self.state();
        match (stalled, state.stalled_since) {
            (true, None) => {
                state.stalled_since = Some(Instant::now());
                drop(state);
                self.changed.notify_one();
            }
            (false, Some(_)) => state.stalled_since = None,
            _ => {}
        }
    }

    /// Bytes came in.
    fn read(&self) {
        let mut state = self.state();
        state.heard = true;
        if state.busy == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Ends when the connection has broken a timeout.
    async fn expired(&self, limits: AdminLimits) {
        loop {
            let changed = self.changed.notified();
            let deadline = {
                let state = self.state();
                if state.evicted {
                    return;
                }
                match (state.stalled_since, state.busy, state.head_since) {
                    (Some(since), _, _) => Some(since + limits.header_timeout),
                    (None, 0, Some(since)) => Some(since + limits.header_timeout),
                    (None, 0, None) => Some(state.idle_since + limits.idle_timeout),
                    // A request's body has `header_timeout` to arrive (see `Timed`); its answer
                    // may take as long as it needs to be ready.
                    (None, _, _) => None,
                }
            };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return,
                // Woken at the deadline, the state is read again: it may have moved on.
                Some(deadline) => tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(deadline) => {}
                },
                None => changed.await,
            }
        }
    }
}

/// A request in flight, until its answer is sent (or the connection ends).
struct Busy(Arc<Watch>);

impl Busy {
    fn begin(watch: &Arc<Watch>) -> Self {
        let mut state = watch.state();
        state.busy += 1;
        state.head_since = None;
        drop(state);
        watch.changed.notify_one();
        Self(watch.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.busy -= 1;
        state.idle_since = Instant::now();
        drop(state);
        self.0.changed.notify_one();
    }
}

/// An answer's body, which keeps its request in flight until it is sent.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request's body, which must arrive by its deadline, however it trickles in.
struct Timed {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Timed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("the request body did not arrive in time".into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's stream: tells the watch when bytes come, and puts the JSON envelope on
/// hyper's own error answers.
struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
    /// Our answer in place of hyper's, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncWrite + Unpin> Watched<S> {
    /// Writes what is left of our answer; ready when it is all written.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.answer {
            if *written == bytes.len() {
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.answer.is_some() {
            // After its error answer hyper writes nothing more; whatever it is, ours replaced it.
            std::task::ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        if let Some(status) = hypers_own_answer(buf) {
            self.answer = Some((envelope(status), 0));
            std::task::ready!(self.poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.write_stalled(written.is_pending());
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_answer(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The status of an answer hyper wrote by itself: one to a request it could not parse, the
/// only kind of answer that is an error without a body (every answer of the router to an
/// error carries the envelope).
fn hypers_own_answer(bytes: &[u8]) -> Option<StatusCode> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let status = StatusCode::from_bytes(rest.get(..3)?).ok()?;
    let head_end = memchr::memmem::find(bytes, b"\r\n\r\n")?;
    let head = &bytes[..head_end];
    let empty = memchr::memmem::find(&head.to_ascii_lowercase(), b"\r\ncontent-length: 0\r\n").is_some()
        || head.to_ascii_lowercase().ends_with(b"\r\ncontent-length: 0");
    (status.is_client_error() && empty && head_end + 4 == bytes.len()).then_some(status)
}

/// A whole HTTP answer with `status` and the JSON envelope; the connection closes after it.
fn envelope(status: StatusCode) -> Vec<u8> {
    let message = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            format!("the request's headers are over {MAX_HEAD} bytes or {MAX_HEADERS} fields")
        }
        _ => "the request is not valid HTTP/1.1".to_owned(),
    };
    let body = serde_json::to_vec(&ApiError::for_status(status, message).body()).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_silent_connections_before_one_whose_request_waited() {
        let table = Arc::new(Table::new(2));
        let mut seats = vec![Table::seat(&table, false).unwrap()];
        let probe = Table::seat(&table, true).unwrap();
        for n in 0..5 {
            seats.push(Table::seat(&table, false).unwrap());
            assert!(!probe.watch.state().evicted, "the probe was closed for newcomer {n}");
            // The silent one it replaced leaves.
            let before = seats.len();
            seats.retain(|seat| !seat.watch.state().evicted);
            assert_eq!(seats.len(), before - 1, "newcomer {n}");
        }
    }

    #[test]
    fn only_hypers_bodiless_error_answers_are_replaced() {
        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 22 Nov 2026 05:00:00 GMT\r\n\r\n";
        assert_eq!(
            hypers_own_answer(own),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let last = b"HTTP/1.1 400 Bad Request\r\ndate: Sun, 22 Nov 2026 05:00:00 GMT\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hypers_own_answer(last), Some(StatusCode::BAD_REQUEST));
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n{",
            b"{\"error\": 1}",
        ] {
            assert_eq!(hypers_own_answer(ours), None, "{}", String::from_utf8_lossy(ours));
        }
    }

    #[test]
    fn the_envelope_is_a_whole_answer() {
        let answer = String::from_utf8(envelope(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
    }
}
