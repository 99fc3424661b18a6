//! Frames of the agent channel (see `supersocket_proto::agent`): encoding a message with its
//! raw payload, cutting frames out of bytes read, and the blocking exchange of the first frame
//! with the listening sockets attached (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use bytes::{Buf, Bytes, BytesMut};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use supersocket_proto::agent::MAX_FRAME;

/// Most listening sockets one instance may pass to its agent.
pub(crate) const MAX_FDS: usize = 64;

/// Bytes before a frame's header: the length of the rest, the length of the header.
const PREFIX: usize = 8;

/// One frame: `header` as JSON, then `payload` as is.
pub(crate) fn encode(header: &impl Serialize, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(PREFIX + 96 + payload.len());
    frame.extend_from_slice(&[0; PREFIX]);
    serde_json::to_writer(&mut frame, header)?;
    let header_length = frame.len() - PREFIX;
    frame.extend_from_slice(payload);
    let rest = frame.len() - 4;
    if rest > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {rest} bytes is over the channel's limit of {MAX_FRAME}"
        )));
    }
    frame[..4].copy_from_slice(&(rest as u32).to_be_bytes());
    frame[4..PREFIX].copy_from_slice(&(header_length as u32).to_be_bytes());
    Ok(frame)
}

/// Cuts the next whole frame off `buffer`: its header bytes and its payload (sharing the
/// buffer's memory). `Ok(None)` until a whole frame is there; an error for a frame that breaks
/// the format (the channel cannot go on after it).
pub(crate) fn split(buffer: &mut BytesMut) -> std::io::Result<Option<(Bytes, Bytes)>> {
    if buffer.len() < PREFIX {
        return Ok(None);
    }
    let rest = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
    let header_length = u32::from_be_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]) as usize;
    if rest > MAX_FRAME || header_length + 4 > rest {
        return Err(std::io::Error::other(format!(
            "malformed frame: {rest} bytes with a header of {header_length}"
        )));
    }
    if buffer.len() < 4 + rest {
        buffer.reserve(4 + rest - buffer.len());
        return Ok(None);
    }
    buffer.advance(PREFIX);
    let header = buffer.split_to(header_length).freeze();
    let payload = buffer.split_to(rest - 4 - header_length).freeze();
    Ok(Some((header, payload)))
}

/// Receives what the socket holds into `buffer`, and the descriptors that came with it into
/// `fds` (a non-blocking socket answers WouldBlock when it holds nothing).
pub(crate) fn recv_some(socket: RawFd, buffer: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<()>(socket, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: the kernel just installed these descriptors in this process for us;
            // nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(message.bytes)
}

/// Sends from `bytes` (at least the first byte) with `fd` attached (a non-blocking socket
/// answers WouldBlock when it has no room).
pub(crate) fn send_some(socket: RawFd, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let raw = [fd.as_raw_fd()];
    let rights = [ControlMessage::ScmRights(&raw)];
    Ok(sendmsg::<()>(
        socket,
        &[IoSlice::new(bytes)],
        &rights,
        MsgFlags::empty(),
        None,
    )?)
}

/// Sends one frame with `fds` attached (blocking socket).
pub(crate) fn send_with_fds(
    socket: &StdUnixStream,
    header: &impl Serialize,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let frame = encode(header, &[])?;
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
    let mut prefix = [0u8; PREFIX];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut fds = Vec::new();
    let mut got = 0;
    while got < prefix.len() {
        let mut iov = [IoSliceMut::new(&mut prefix[got..])];
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
    let mut buffer = BytesMut::from(&prefix[..]);
    let rest = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if rest > MAX_FRAME || rest + 4 < PREFIX {
        return Err(std::io::Error::other(format!("malformed first frame of {rest} bytes")));
    }
    let mut body = vec![0u8; rest + 4 - PREFIX];
    std::io::Read::read_exact(&mut &*socket, &mut body)?;
    buffer.extend_from_slice(&body);
    let (header, _) = split(&mut buffer)?.ok_or_else(|| std::io::Error::other("a short first frame"))?;
    Ok((serde_json::from_slice(&header)?, fds))
}

/// Splits bytes as a broken or hostile peer may send them, and checks what must hold: whole
/// frames, a wait, or an error; never a panic, never a reservation beyond the largest frame.
/// For the property tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_splitting(bytes: &[u8]) {
    let mut buffer = BytesMut::from(bytes);
    while let Ok(Some(_)) = split(&mut buffer) {}
    assert!(buffer.capacity() <= MAX_FRAME + 4 + bytes.len());
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use supersocket_proto::agent::{Message, Op};

    use super::*;

    #[test]
    fn frames_carry_raw_payloads_and_split_at_every_byte() {
        let header = Message::Request {
            id: 7,
            op: Op::Send {
                server: "B".into(),
                session: 42,
            },
        };
        let payload = b"hello\r\n\x00\xff";
        let one = encode(&header, payload).unwrap();
        let two = [one.clone(), one.clone()].concat();
        for cut in 0..=two.len() {
            let mut buffer = BytesMut::from(&two[..cut]);
            let mut frames = Vec::new();
            while let Some((head, body)) = split(&mut buffer).unwrap() {
                frames.push((serde_json::from_slice::<Message>(&head).unwrap(), body));
            }
            buffer.extend_from_slice(&two[cut..]);
            while let Some((head, body)) = split(&mut buffer).unwrap() {
                frames.push((serde_json::from_slice::<Message>(&head).unwrap(), body));
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert!(frames.iter().all(|(h, b)| *h == header && &b[..] == payload));
        }
        let mut broken = BytesMut::from(&[0, 0, 0, 8, 0, 0, 1, 0][..]);
        assert!(split(&mut broken).is_err(), "a header longer than its frame");
    }

    #[test]
    fn a_listening_socket_travels_with_the_first_frame() {
        let (host, agent) = StdUnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let header = serde_json::json!({"name": "x"});
        send_with_fds(&host, &header, &[listener.as_fd()]).unwrap();
        let (received, fds): (serde_json::Value, Vec<OwnedFd>) = recv_with_fds(&agent).unwrap();
        assert_eq!(received, header);
        assert_eq!(fds.len(), 1);
        // The passed descriptor is the same listening socket: a client reaches it.
        let passed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(passed.accept().is_ok());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any bytes: whole frames, a wait for more, or an error; never a panic, and never a
            /// reservation beyond the largest frame.
            #[test]
            fn any_bytes_split_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                check_splitting(&bytes);
            }

            /// What is encoded comes out whole, however the bytes arrive.
            #[test]
            fn frames_come_back_whole(id in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<usize>()) {
                let frame = encode(&serde_json::json!({ "id": id }), &payload).unwrap();
                let cut = cut % (frame.len() + 1);
                let mut buffer = BytesMut::from(&frame[..cut]);
                if cut < frame.len() {
                    prop_assert!(split(&mut buffer).unwrap().is_none());
                }
                buffer.extend_from_slice(&frame[cut..]);
                let (header, body) = split(&mut buffer).unwrap().unwrap();
                let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
                prop_assert_eq!(header["id"].as_u64(), Some(id));
                prop_assert_eq!(&body[..], &payload[..]);
                prop_assert!(buffer.is_empty());
            }
        }
    }
}
