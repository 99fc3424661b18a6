//! The control channel between the host and an agent: frames of a `u32` big-endian length and
//! JSON, the first one carrying listening sockets (SCM_RIGHTS), and a [`Link`] that sends
//! messages, matches replies to requests and hands everything else to its owner.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use supersocket_proto::agent::{Failure, FromAgent, MAX_FRAME, Reply, ToAgent};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::instance::{CallError, Instance};
use crate::session::SendError;

/// Most listening sockets one instance may pass to its agent.
pub(crate) const MAX_FDS: usize = 64;

fn frame(message: &impl Serialize) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(message)?;
    let length = u32::try_from(json.len()).map_err(|_| std::io::Error::other("control frame too long"))?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// Sends one frame with `fds` attached (blocking socket).
pub(crate) fn send_with_fds(
    socket: &StdUnixStream,
    message: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let frame = frame(message)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&frame)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    // The rest (if the kernel took only part) goes without the rights, which rode the first byte.
    std::io::Write::write_all(&mut &*socket, &frame[sent..])
}

/// Receives one frame and the fds attached to it (blocking socket). Nothing may follow the
/// frame until the receiver answers, so no byte of a next frame is consumed here.
pub(crate) fn recv_with_fds<T: DeserializeOwned>(socket: &StdUnixStream) -> std::io::Result<(T, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let mut got = 0;
    while got < header.len() {
        let mut iov = [IoSliceMut::new(&mut header[got..])];
        let message = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = control {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else owns them.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if message.bytes == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += message.bytes;
    }
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(std::io::Error::other("control frame too long"));
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(&mut &*socket, &mut body)?;
    Ok((serde_json::from_slice(&body)?, fds))
}

/// A message that may be the reply to a request of ours.
pub(crate) trait Envelope: Sized {
    /// The request id and answer, if this is a reply.
    fn into_reply(self) -> Result<(u64, Reply), Self>;
}

impl Envelope for ToAgent {
    fn into_reply(self) -> Result<(u64, Reply), Self> {
        match self {
            Self::Reply { id, reply } => Ok((id, reply)),
            other => Err(other),
        }
    }
}

impl Envelope for FromAgent {
    fn into_reply(self) -> Result<(u64, Reply), Self> {
        match self {
            Self::Reply { id, reply } => Ok((id, reply)),
            other => Err(other),
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One end of a control channel: sends `Out` messages, receives `In` ones.
pub(crate) struct Link<Out> {
    outgoing: mpsc::Sender<Out>,
    pending: Pending,
    ids: AtomicU64,
}

/// Frames waiting to be written before a sender waits.
const OUTGOING_QUEUE: usize = 1024;

impl<Out: Serialize + Send + 'static> Link<Out> {
    /// Runs the channel on `stream`: returns the link, and the messages that are not replies to
    /// our requests (the receiver ends when the other side hangs up).
    pub(crate) fn start<In>(stream: UnixStream) -> (Arc<Self>, mpsc::Receiver<In>)
    where
        In: Envelope + DeserializeOwned + Send + 'static,
    {
        let (reader, mut writer) = stream.into_split();
        let (outgoing, mut to_write) = mpsc::channel::<Out>(OUTGOING_QUEUE);
        let (incoming, received) = mpsc::channel::<In>(OUTGOING_QUEUE);
        let pending: Pending = Arc::default();
        tokio::spawn(async move {
            while let Some(message) = to_write.recv().await {
                let Ok(frame) = frame(&message) else { continue };
                if tokio::io::AsyncWriteExt::write_all(&mut writer, &frame).await.is_err() {
                    break;
                }
            }
        });
        let replies = pending.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(reader);
            while let Some(frame) = read_frame(&mut reader).await {
                let Ok(message) = serde_json::from_slice::<In>(&frame) else {
                    tracing::warn!("unreadable control frame of {} bytes", frame.len());
                    continue;
                };
                match message.into_reply() {
                    Ok((id, reply)) => {
                        let waiter = replies.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(reply);
                        }
                    }
                    Err(message) => {
                        if incoming.send(message).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // The other side is gone: every request still waiting fails.
            replies.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        (
            Arc::new(Self {
                outgoing,
                pending,
                ids: AtomicU64::new(1),
            }),
            received,
        )
    }

    /// Sends a message; false if the other side is gone.
    pub(crate) async fn send(&self, message: Out) -> bool {
        self.outgoing.send(message).await.is_ok()
    }

    /// Sends the request `make(id)` and waits for its reply.
    pub(crate) async fn request(&self, make: impl FnOnce(u64) -> Out) -> Reply {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (answer, reply) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, answer);
        if !self.send(make(id)).await {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(Failure::NotRunning);
        }
        // The other side hung up: its instance is not running any more.
        reply.await.unwrap_or(Err(Failure::NotRunning))
    }
}

/// Reads one frame; `None` at the end of the stream or on a frame over [`MAX_FRAME`].
async fn read_frame(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Option<Vec<u8>> {
    let length = reader.read_u32().await.ok()? as usize;
    if length > MAX_FRAME {
        tracing::warn!("control frame of {length} bytes refused");
        return None;
    }
    let mut frame = vec![0u8; length];
    reader.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

/// Bytes as they travel in control messages.
pub(crate) fn encode(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// Bytes from a control message.
fn decode(text: &str) -> Result<Bytes, Failure> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
        .map(Bytes::from)
        .map_err(|e| Failure::Failed {
            message: format!("bad base64: {e}"),
        })
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NoSession => Self::NoSession,
            SendError::QueueFull => Self::QueueFull,
        }
    }
}

/// The send error a failure stands for.
pub(crate) fn send_error(failure: Failure) -> SendError {
    match failure {
        Failure::QueueFull => SendError::QueueFull,
        _ => SendError::NoSession,
    }
}

/// The call error a failure of a call to `server` stands for.
pub(crate) fn call_error(server: &str, failure: Failure) -> CallError {
    match failure {
        Failure::NotRunning => CallError::NotRunning(server.to_owned()),
        other => CallError::Failed {
            server: server.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Queues bytes (base64) for a session (its id as text) of `target`: what both sides of the
/// channel do for a `Send` of the other.
pub(crate) async fn send(target: &Instance, session: &str, base64: &str) -> Reply {
    let id = session.parse().map_err(|_| Failure::NoSession)?;
    target.send_to(id, decode(base64)?).await?;
    Ok(serde_json::Value::Null)
}

/// Queues bytes (base64) for every session of `target` → how many took them.
pub(crate) async fn broadcast(target: &Instance, base64: &str) -> Reply {
    Ok(target.broadcast(decode(base64)?).await.into())
}

/// Calls `target` → its answer.
pub(crate) async fn call(target: &Instance, request: serde_json::Value) -> Reply {
    target.call(request).await.map_err(|e| match e {
        CallError::NotRunning(_) => Failure::NotRunning,
        CallError::Failed { message, .. } => Failure::Failed { message },
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use supersocket_proto::agent::{AgentRequest, FromAgent, ToAgent};

    use super::*;

    #[test]
    fn a_listening_socket_travels_with_the_first_frame() {
        let (host, agent) = StdUnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let init = ToAgent::Init {
            server: serde_json::json!({"name": "x"}),
            session_ids_from: 7,
            peers: vec![],
        };
        send_with_fds(&host, &init, &[listener.as_fd()]).unwrap();
        let (received, fds): (ToAgent, Vec<OwnedFd>) = recv_with_fds(&agent).unwrap();
        assert_eq!(received, init);
        assert_eq!(fds.len(), 1);
        // The passed descriptor is the same listening socket: a client reaches it.
        let passed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(passed.accept().is_ok());
    }

    #[tokio::test]
    async fn requests_get_their_own_replies() {
        let (host, agent) = StdUnixStream::pair().unwrap();
        for socket in [&host, &agent] {
            socket.set_nonblocking(true).unwrap();
        }
        let (host_link, _host_incoming) = Link::<ToAgent>::start::<FromAgent>(UnixStream::from_std(host).unwrap());
        let (agent_link, mut agent_incoming) =
            Link::<FromAgent>::start::<ToAgent>(UnixStream::from_std(agent).unwrap());
        // The agent answers each Kick with the session it named.
        tokio::spawn(async move {
            while let Some(ToAgent::Request {
                id,
                request: AgentRequest::Kick { session },
            }) = agent_incoming.recv().await
            {
                agent_link
                    .send(FromAgent::Reply {
                        id,
                        reply: Ok(serde_json::json!(session)),
                    })
                    .await;
            }
        });
        let kick = |session: &'static str| {
            move |id| ToAgent::Request {
                id,
                request: AgentRequest::Kick {
                    session: session.into(),
                },
            }
        };
        let (a, b) = tokio::join!(host_link.request(kick("a")), host_link.request(kick("b")));
        assert_eq!((a, b), (Ok(serde_json::json!("a")), Ok(serde_json::json!("b"))));
    }
}
