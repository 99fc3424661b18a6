//! One end of the channel between two processes of the host: it sends requests and matches
//! their replies, answers the other side's requests through a [`Serve`], and hears its events.
//!
//! - Frames queue in one buffer that a writer task writes whenever it wakes, so many messages
//!   cost one write; a reader task takes whole frames out of large reads.
//! - Every request has a deadline. Requests in flight are bounded in number and bytes, and so
//!   are the bytes not yet written; beyond that requests wait in line, first come first served,
//!   and the line itself is bounded: a stalled peer makes its senders wait (and then fail),
//!   never the process grow.
//! - When the channel ends (the peer died or hung up, or a frame broke the format), every
//!   request still open fails at once: one never sent as [`OpError::NotRunning`], one sent as
//!   [`OpError::Unanswered`] (it may have been carried out: a caller must not repeat it).
//! - An event may carry a descriptor (a socket the host hands to an agent), attached to its
//!   frame's first byte; the other side takes it with [`Link::take_fd`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use supersocket_proto::agent::{Event, Failure, MAX_FRAME, Message, Op, Outcome};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame;
use crate::outcome::{OpError, Pending};

/// Most requests in flight on one link.
const MAX_IN_FLIGHT: usize = 4096;
/// Most payload bytes in flight on one link (one bigger request still passes an idle link).
const MAX_IN_FLIGHT_BYTES: usize = 8 * 1024 * 1024;
/// Most bytes queued for the socket and not written yet (one bigger frame still passes).
const MAX_UNWRITTEN: usize = 8 * 1024 * 1024;
/// Most requests, and bytes, waiting for room; beyond them a request fails at once.
const MAX_WAITING: usize = 64 * 1024;
const MAX_WAITING_BYTES: usize = 16 * 1024 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// What a link does with what the other side asks and tells.
pub(crate) trait Serve: Send + Sync + 'static {
    /// Answers request `id` (with [`Link::reply`], now or later).
    fn request(&self, link: &Link, id: u64, op: Op, payload: Bytes);
    /// Takes an event.
    fn event(&self, link: &Link, event: Event);
}

/// One end of a channel; cheap to clone.
#[derive(Clone)]
pub(crate) struct Link(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when frames are queued.
    written: Notify,
    ids: AtomicU64,
    /// Cancelled when the channel ends.
    closed: CancellationToken,
    /// When the other side was last heard from, in milliseconds after `born`.
    heard_ms: AtomicU64,
    born: Instant,
    /// Descriptors received and not taken yet, in the order they came.
    fds: Mutex<VecDeque<OwnedFd>>,
}

#[derive(Default)]
struct State {
    /// Frames to write, in order.
    outgoing: Vec<u8>,
    /// Descriptors to send, each with the offset in `outgoing` of the frame it rides with.
    outgoing_fds: Vec<(usize, OwnedFd)>,
    /// Requests sent, by id: who waits for the reply, and the payload bytes they hold.
    in_flight: HashMap<u64, (oneshot::Sender<Outcome>, usize)>,
    in_flight_bytes: usize,
    /// Requests not sent yet for want of room, in order.
    waiting: VecDeque<Waiting>,
    /// Bytes of the frames in `waiting`.
    waiting_bytes: usize,
    /// The channel has ended: nothing more is sent.
    ended: bool,
}

struct Waiting {
    id: u64,
    frame: Vec<u8>,
    bytes: usize,
    reply: oneshot::Sender<Outcome>,
}

impl State {
    fn has_room(&self, bytes: usize, frame: usize) -> bool {
        let unwritten = self.outgoing.is_empty() || self.outgoing.len() + frame <= MAX_UNWRITTEN;
        let in_flight = self.in_flight.is_empty()
            || (self.in_flight.len() < MAX_IN_FLIGHT && self.in_flight_bytes + bytes <= MAX_IN_FLIGHT_BYTES);
        unwritten && in_flight
    }

    fn send(&mut self, id: u64, frame: &[u8], bytes: usize, reply: oneshot::Sender<Outcome>) {
        self.outgoing.extend_from_slice(frame);
        self.in_flight.insert(id, (reply, bytes));
        self.in_flight_bytes += bytes;
    }

    /// Sends waiting requests while there is room; those whose sender stopped waiting are
    /// dropped. True if any was sent.
    fn admit(&mut self) -> bool {
        let mut sent = false;
        while let Some(next) = self.waiting.front() {
            if next.reply.is_closed() {
                let frame = next.frame.len();
                self.waiting.pop_front();
                self.waiting_bytes -= frame;
                continue;
            }
            if !self.has_room(next.bytes, next.frame.len()) {
                break;
            }
            let Some(next) = self.waiting.pop_front() else { break };
            self.waiting_bytes -= next.frame.len();
            self.send(next.id, &next.frame, next.bytes, next.reply);
            sent = true;
        }
        sent
    }

    /// The reply to `id` has come (or its sender gave up): its room is free again.
    fn settle(&mut self, id: u64) -> Option<oneshot::Sender<Outcome>> {
        let (reply, bytes) = self.in_flight.remove(&id)?;
        self.in_flight_bytes -= bytes;
        Some(reply)
    }
}

impl Link {
    /// Runs a channel on `stream`; `serve` answers the other side. The tasks end with the
    /// channel.
    pub(crate) fn start(stream: UnixStream, serve: Arc<dyn Serve>) -> Self {
        let link = Self(Arc::new(Shared {
            state: Mutex::default(),
            written: Notify::new(),
            ids: AtomicU64::new(1),
            closed: CancellationToken::new(),
            heard_ms: AtomicU64::new(0),
            born: Instant::now(),
            fds: Mutex::default(),
        }));
        let stream = Arc::new(stream);
        tokio::spawn(link.clone().write(stream.clone()));
        tokio::spawn(link.clone().read(stream, serve));
        link
    }

    /// Whether `other` is this same link.
    pub(crate) fn same(&self, other: &Link) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the other side; the outcome comes within `deadline` or is [`OpError::Unanswered`].
    pub(crate) fn request(&self, op: Op, payload: Bytes, deadline: Duration) -> Pending<serde_json::Value> {
        let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
        let frame = match frame::encode(&Message::Request { id, op }, &payload) {
            Ok(frame) => frame,
            Err(e) => return Pending::ready(Err(OpError::Refused(e.to_string()))),
        };
        let (reply, outcome) = oneshot::channel();
        let bytes = payload.len();
        {
            let mut state = self.state();
            if state.ended {
                return Pending::ready(Err(OpError::NotRunning));
            }
            if state.waiting.is_empty() && state.has_room(bytes, frame.len()) {
                state.send(id, &frame, bytes, reply);
                drop(state);
                self.0.written.notify_one();
            } else if state.waiting.len() >= MAX_WAITING || state.waiting_bytes + frame.len() > MAX_WAITING_BYTES {
                return Pending::ready(Err(OpError::Unanswered));
            } else {
                state.waiting_bytes += frame.len();
                state.waiting.push_back(Waiting {
                    id,
                    frame,
                    bytes,
                    reply,
                });
            }
        }
        let guard = Unsettled { link: self.clone(), id };
        // From now, however late the sender awaits the outcome.
        let deadline = Instant::now().checked_add(deadline).unwrap_or_else(far_future);
        Pending::waiting(async move {
            let outcome = tokio::time::timeout_at(deadline, outcome).await;
            drop(guard);
            match outcome {
                Ok(Ok(outcome)) => outcome.map_err(op_error),
                // The channel ended before the reply came.
                Ok(Err(_)) => Err(OpError::NotRunning),
                Err(_) => Err(OpError::Unanswered),
            }
        })
    }

    /// Answers request `id` of the other side. An answer too large for a frame (a session
    /// list of millions) is answered as refused, so that the asker learns it at once.
    pub(crate) fn reply(&self, id: u64, outcome: Result<serde_json::Value, OpError>) {
        let message = Message::Reply {
            id,
            outcome: outcome.map_err(failure),
        };
        if self.queue(&message, None).is_err() {
            let refused = Failure::Refused {
                message: format!("the answer is over the channel's limit of {MAX_FRAME} bytes"),
            };
            let _ = self.queue(
                &Message::Reply {
                    id,
                    outcome: Err(refused),
                },
                None,
            );
        }
    }

    /// Tells the other side something.
    pub(crate) fn event(&self, event: Event) {
        let _ = self.queue(&Message::Event(event), None);
    }

    /// Tells the other side something and hands it `fd`.
    pub(crate) fn event_with_fd(&self, event: Event, fd: OwnedFd) {
        let _ = self.queue(&Message::Event(event), Some(fd));
    }

    /// The next descriptor the other side handed over, in the order they came.
    pub(crate) fn take_fd(&self) -> Option<OwnedFd> {
        self.0.fds.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Queues a message to write; an error if it cannot be encoded (too large).
    fn queue(&self, message: &Message, fd: Option<OwnedFd>) -> std::io::Result<()> {
        let frame = frame::encode(message, &[])?;
        let mut state = self.state();
        if state.ended {
            return Ok(());
        }
        if let Some(fd) = fd {
            let at = state.outgoing.len();
            state.outgoing_fds.push((at, fd));
        }
        state.outgoing.extend_from_slice(&frame);
        drop(state);
        self.0.written.notify_one();
        Ok(())
    }

    /// How long since the other side was last heard from.
    pub(crate) fn silent_for(&self) -> Duration {
        let heard = Duration::from_millis(self.0.heard_ms.load(Ordering::Relaxed));
        (Instant::now() - self.0.born).saturating_sub(heard)
    }

    /// Ends the channel: requests still open fail, nothing more is sent.
    pub(crate) fn close(&self) {
        self.0.closed.cancel();
        let (in_flight, waiting) = {
            let mut state = self.state();
            state.ended = true;
            state.outgoing = Vec::new();
            state.outgoing_fds = Vec::new();
            state.waiting_bytes = 0;
            (std::mem::take(&mut state.in_flight), std::mem::take(&mut state.waiting))
        };
        for (reply, _) in in_flight.into_values() {
            let _ = reply.send(Err(Failure::Unanswered));
        }
        // Dropping the senders of those never sent tells their waiters (not running).
        drop(waiting);
    }

    /// Resolves when the channel has ended.
    pub(crate) async fn ended(&self) {
        self.0.closed.cancelled().await;
    }

    async fn write(self, stream: Arc<UnixStream>) {
        let _ends = CloseOnDrop(self.clone());
        let (mut batch, mut fds) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                () = self.0.closed.cancelled() => return,
                () = self.0.written.notified() => {}
            }
            {
                let mut state = self.state();
                std::mem::swap(&mut batch, &mut state.outgoing);
                std::mem::swap(&mut fds, &mut state.outgoing_fds);
            }
            if batch.is_empty() {
                continue;
            }
            let written = tokio::select! {
                () = self.0.closed.cancelled() => return,
                written = write_batch(&stream, &batch, fds.drain(..)) => written,
            };
            if written.is_err() {
                return self.close();
            }
            // Room for requests that waited for the socket to take what was queued.
            if self.state().admit() {
                self.0.written.notify_one();
            }
            batch.clear();
            // A batch that grew large once does not stay large.
            batch.shrink_to(READ_CHUNK);
        }
    }

    async fn read(self, stream: Arc<UnixStream>, serve: Arc<dyn Serve>) {
        let _ends = CloseOnDrop(self.clone());
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        let mut scratch = vec![0u8; READ_CHUNK];
        let mut fds = Vec::new();
        loop {
            loop {
                match frame::split(&mut buffer) {
                    Ok(Some((header, payload))) => {
                        if let Err(e) = self.take(&header, payload, &*serve) {
                            tracing::error!("agent channel: {e}; closing it");
                            return self.close();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("agent channel: {e}; closing it");
                        return self.close();
                    }
                }
            }
            let read = tokio::select! {
                () = self.0.closed.cancelled() => return,
                read = receive(&stream, &mut scratch, &mut fds) => read,
            };
            match read {
                Ok(n) if n > 0 => {
                    buffer.extend_from_slice(&scratch[..n]);
                    // Before the frames they came with are handled.
                    self.0
                        .fds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(fds.drain(..));
                    let heard = (Instant::now() - self.0.born).as_millis() as u64;
                    self.0.heard_ms.store(heard, Ordering::Relaxed);
                }
                _ => return self.close(),
            }
        }
    }

    /// Handles one frame.
    fn take(&self, header: &[u8], payload: Bytes, serve: &dyn Serve) -> Result<(), String> {
        let message: Message = serde_json::from_slice(header).map_err(|e| format!("unreadable frame header: {e}"))?;
        match message {
            Message::Reply { id, outcome } => {
                let (reply, sent) = {
                    let mut state = self.state();
                    let reply = state.settle(id);
                    (reply, state.admit())
                };
                if sent {
                    self.0.written.notify_one();
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Message::Request { id, op } => serve.request(self, id, op, payload),
            Message::Event(event) => serve.event(self, event),
        }
        Ok(())
    }
}

/// Writes `batch`, each descriptor of `fds` attached to the byte at its offset (the offsets
/// rise).
async fn write_batch(
    stream: &UnixStream,
    batch: &[u8],
    fds: impl Iterator<Item = (usize, OwnedFd)>,
) -> std::io::Result<()> {
    let mut at = 0;
    let mut fds = fds.peekable();
    while let Some((offset, fd)) = fds.next() {
        write_all(stream, &batch[at..offset]).await?;
        // The frame the descriptor rides with, and no further: the next descriptor starts its own.
        let end = fds.peek().map_or(batch.len(), |(next, _)| *next);
        loop {
            stream.writable().await?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                frame::send_some(stream.as_raw_fd(), &batch[offset..end], fd.as_fd())
            });
            match sent {
                Ok(n) => {
                    at = offset + n;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    write_all(stream, &batch[at..]).await
}

async fn write_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there into `buffer`, and the descriptors that came with it into `fds`.
async fn receive(stream: &UnixStream, buffer: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || frame::recv_some(stream.as_raw_fd(), buffer, fds));
        match received {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// A deadline no run reaches (for a bound too large to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Closes the link when a task of its ends, however it ends (a panic included), so that no
/// request waits on a link nobody serves.
struct CloseOnDrop(Link);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A request whose reply has not been taken: dropped, it frees the request's room (its sender
/// gave up at the deadline, or stopped waiting).
struct Unsettled {
    link: Link,
    id: u64,
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        let sent = {
            let mut state = self.link.state();
            state.settle(self.id);
            state.admit()
        };
        if sent {
            self.link.0.written.notify_one();
        }
    }
}

/// The error a failure of the other side stands for.
pub(crate) fn op_error(failure: Failure) -> OpError {
    match failure {
        Failure::NoSession => OpError::NoSession,
        Failure::QueueFull => OpError::QueueFull,
        Failure::NotRunning => OpError::NotRunning,
        Failure::Unanswered => OpError::Unanswered,
        Failure::Refused { message } => OpError::Refused(message),
    }
}

/// How an error travels to the other side.
pub(crate) fn failure(error: OpError) -> Failure {
    match error {
        OpError::NoSession => Failure::NoSession,
        OpError::QueueFull => Failure::QueueFull,
        OpError::NotRunning => Failure::NotRunning,
        OpError::Unanswered => Failure::Unanswered,
        OpError::Refused(message) => Failure::Refused { message },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Answers each Send with the session it named, in the order received; counts events.
    struct Answers {
        events: AtomicUsize,
    }

    impl Serve for Answers {
        fn request(&self, link: &Link, id: u64, op: Op, payload: Bytes) {
            if let Op::Send { session, .. } = op {
                let text = String::from_utf8_lossy(&payload).into_owned();
                link.reply(id, Ok(serde_json::json!([session, text])));
            }
        }

        fn event(&self, _: &Link, _: Event) {
            self.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Never answers.
    struct Silent;

    impl Serve for Silent {
        fn request(&self, _: &Link, _: u64, _: Op, _: Bytes) {}
        fn event(&self, _: &Link, _: Event) {}
    }

    fn pair(a: Arc<dyn Serve>, b: Arc<dyn Serve>) -> (Link, Link) {
        let (x, y) = UnixStream::pair().unwrap();
        (Link::start(x, a), Link::start(y, b))
    }

    fn send(link: &Link, session: u64, text: &'static str, deadline: Duration) -> Pending<serde_json::Value> {
        let op = Op::Send {
            server: "s".into(),
            session,
        };
        link.request(op, Bytes::from_static(text.as_bytes()), deadline)
    }

    #[tokio::test]
    async fn requests_get_their_own_replies_with_raw_payloads() {
        let answers = Arc::new(Answers {
            events: AtomicUsize::new(0),
        });
        let (host, _agent) = pair(Arc::new(Silent), answers.clone());
        let many: Vec<_> = (0..10_000)
            .map(|i| send(&host, i, "bytes \u{0}\r\n", Duration::from_secs(10)))
            .collect();
        for (i, pending) in many.into_iter().enumerate() {
            assert_eq!(pending.await, Ok(serde_json::json!([i, "bytes \u{0}\r\n"])));
        }
        host.event(Event::Failed { error: "x".into() });
        let deadline = Instant::now() + Duration::from_secs(5);
        while answers.events.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the event arrives");
            tokio::task::yield_now().await;
        }
    }

    /// Takes every descriptor it is handed, in order.
    struct Takes(Mutex<Vec<OwnedFd>>);

    impl Serve for Takes {
        fn request(&self, _: &Link, _: u64, _: Op, _: Bytes) {}
        fn event(&self, link: &Link, event: Event) {
            if let Event::Link { .. } = event {
                let fd = link.take_fd().expect("a descriptor came with the event");
                self.0.lock().unwrap().push(fd);
            }
        }
    }

    #[tokio::test]
    async fn descriptors_ride_with_their_frames_however_the_frames_are_batched() {
        let takes = Arc::new(Takes(Mutex::default()));
        let (host, _agent) = pair(Arc::new(Silent), takes.clone());
        let mut kept = Vec::new();
        for round in 0..20u8 {
            // Several frames with descriptors, and plain frames between them, in one batch.
            for i in 0..3u8 {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                host.event_with_fd(
                    Event::Link {
                        server: format!("{round}-{i}"),
                    },
                    theirs.into(),
                );
                host.event(Event::Failed { error: "filler".into() });
                std::io::Write::write_all(&mut &ours, &[round * 3 + i]).unwrap();
                kept.push(ours);
            }
            tokio::task::yield_now().await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while takes.0.lock().unwrap().len() < 60 {
            assert!(Instant::now() < deadline, "every descriptor arrives");
            tokio::task::yield_now().await;
        }
        for (n, fd) in takes.0.lock().unwrap().drain(..).enumerate() {
            let mut byte = [0u8];
            std::io::Read::read_exact(&mut std::os::unix::net::UnixStream::from(fd), &mut byte).unwrap();
            assert_eq!(
                byte[0] as usize, n,
                "the descriptors came in order, each with its frame"
            );
        }
    }

    #[tokio::test]
    async fn a_peer_that_reads_nothing_holds_a_bounded_number_of_bytes() {
        // The other end is never read.
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let link = Link::start(ours, Arc::new(Silent));
        let megabyte = Bytes::from(vec![b'x'; 1024 * 1024]);
        let op = || Op::Broadcast { server: "s".into() };
        let mut refused_at_once = 0;
        let mut pending = Vec::new();
        for _ in 0..40 {
            match link.request(op(), megabyte.clone(), Duration::from_secs(60)).now() {
                Ok(Err(OpError::Unanswered)) => refused_at_once += 1,
                Ok(other) => panic!("an outcome without an answer: {other:?}"),
                Err(waiting) => pending.push(waiting),
            }
            tokio::task::yield_now().await;
        }
        let state = link.state();
        let held = state.outgoing.len() + state.waiting_bytes;
        assert!(
            held <= MAX_UNWRITTEN + MAX_WAITING_BYTES + (2 << 20),
            "{held} bytes held"
        );
        assert!(refused_at_once > 0, "past its bounds a request fails at once");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_fails_at_its_deadline_and_frees_its_room() {
        let (host, _agent) = pair(Arc::new(Silent), Arc::new(Silent));
        let began = Instant::now();
        let unanswered = send(&host, 1, "x", Duration::from_secs(2)).await;
        assert_eq!(unanswered, Err(OpError::Unanswered));
        assert_eq!(began.elapsed(), Duration::from_secs(2));
        assert!(host.state().in_flight.is_empty(), "its room is free again");
    }

    #[tokio::test]
    async fn requests_beyond_the_bound_wait_in_line_and_all_fail_when_the_channel_ends() {
        let (host, agent) = pair(Arc::new(Silent), Arc::new(Silent));
        let many: Vec<_> = (0..MAX_IN_FLIGHT as u64 + 10)
            .map(|i| send(&host, i, "x", Duration::from_secs(60)))
            .collect();
        assert_eq!(host.state().in_flight.len(), MAX_IN_FLIGHT);
        assert_eq!(host.state().waiting.len(), 10);
        agent.close();
        drop(agent);
        // Those sent may have been carried out: their outcome is unknown. The others never left.
        for (i, pending) in many.into_iter().enumerate() {
            let expected = if i < MAX_IN_FLIGHT {
                OpError::Unanswered
            } else {
                OpError::NotRunning
            };
            assert_eq!(pending.await, Err(expected), "request {i}");
        }
        assert_eq!(
            send(&host, 0, "late", Duration::from_secs(1)).await,
            Err(OpError::NotRunning)
        );
    }
}
